"""``claudeopus``: run the gateway (serve, control, edge) or manage it (admin)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol, TypeVar

import typer

from claudeopus.cli import admin
from claudeopus.cli.runtime import configure_logging, run

app = typer.Typer(help="ClaudeOpus: a self-hosted LLM API gateway for resellers.", no_args_is_help=True)
app.add_typer(admin.app, name="admin")

S = TypeVar("S", bound="ServerSettings")
LogLevel = Annotated[
    str | None, typer.Option("--log-level", help="debug, info, warning (env CLAUDEOPUS_LOG_LEVEL; default info).")
]
AccessLogStdout = Annotated[
    bool, typer.Option("--access-log-stdout", help="Access log to stdout too (env CLAUDEOPUS_ACCESS_LOG_STDOUT=1).")
]
TlsCert = Annotated[
    str | None,
    typer.Option("--tls-cert", help="PEM certificate: serve HTTPS (env CLAUDEOPUS_TLS_CERT).", show_default=False),
]
TlsKey = Annotated[
    str | None,
    typer.Option("--tls-key", help="PEM private key of --tls-cert (env CLAUDEOPUS_TLS_KEY).", show_default=False),
]
Http = Annotated[
    str | None,
    typer.Option(help="Edge HTTP HOST:PORT (env CLAUDEOPUS_HTTP; default 127.0.0.1:8080).", show_default=False),
]
Grpc = Annotated[
    str | None,
    typer.Option(help="Control gRPC HOST:PORT (env CLAUDEOPUS_GRPC; default 127.0.0.1:50051).", show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        help="sqlite://PATH or postgres://... (env CLAUDEOPUS_DATABASE_URL; default sqlite://./claudeopus.db).",
        show_default=False,
    ),
]


class ServerSettings(Protocol):
    """What the server commands need of a settings object before they start."""

    @property
    def log_level(self) -> str: ...


def _launch(settings: Callable[[], S], main: Callable[[S, asyncio.Event], Awaitable[None]]) -> None:
    """Read the settings once (exit 2 with one line if wrong), then run until SIGINT/SIGTERM (exit 1 if start fails)."""
    try:
        checked = settings()
        configure_logging(checked.log_level)
    except ValueError as error:
        typer.echo(f"claudeopus: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        run(lambda stop: main(checked, stop))
    except OSError as error:
        typer.echo(f"claudeopus: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None


def _on_or_unset(flag: bool) -> bool | None:
    """An on-only flag: on when given, else the environment decides."""
    return True if flag else None


@app.command()
def serve(
    http: Http = None,
    grpc: Grpc = None,
    database_url: DatabaseUrl = None,
    upstream_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL (env CLAUDEOPUS_UPSTREAM_URL); none = demo upstream.", show_default=False
        ),
    ] = None,
    log_level: LogLevel = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    access_log_stdout: AccessLogStdout = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Edge processes beside control (env CLAUDEOPUS_WORKERS); 0 = in-process.", show_default=False
        ),
    ] = None,
) -> None:
    """Run control and edge together (one process unless workers are asked for; embedded SQLite by default)."""
    from claudeopus.cli.servers import run_serve
    from claudeopus.cli.settings import ServeSettings

    _launch(
        lambda: ServeSettings.from_env(
            http_address=http,
            grpc_address=grpc,
            database_url=database_url,
            upstream_url=upstream_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            access_log_stdout=_on_or_unset(access_log_stdout),
            log_level=log_level,
            workers=workers,
        ),
        run_serve,
    )


@app.command()
def control(
    grpc: Grpc = None,
    database_url: DatabaseUrl = None,
    log_level: LogLevel = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(help="PEM certificate: gRPC over TLS (env CLAUDEOPUS_CONTROL_TLS_CERT).", show_default=False),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(help="PEM private key of --tls-cert (env CLAUDEOPUS_CONTROL_TLS_KEY).", show_default=False),
    ] = None,
    client_ca: Annotated[
        str | None,
        typer.Option(
            help="PEM CA bundle: require client certificates it signed (env CLAUDEOPUS_CONTROL_CLIENT_CA).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the control plane alone (needs CLAUDEOPUS_SERVICE_TOKEN, shared with the edge)."""
    from claudeopus.cli.servers import run_control
    from claudeopus.control.settings import ControlSettings

    _launch(
        lambda: ControlSettings.from_env(
            grpc_address=grpc,
            database_url=database_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=client_ca,
            log_level=log_level,
        ),
        run_control,
    )


@app.command()
def edge(
    control: Annotated[
        str | None,
        typer.Option(help="Control HOST:PORT (env CLAUDEOPUS_CONTROL; default 127.0.0.1:50051).", show_default=False),
    ] = None,
    http: Http = None,
    upstream_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (env CLAUDEOPUS_UPSTREAM_URL).", show_default=False)
    ] = None,
    log_level: LogLevel = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    access_log_stdout: AccessLogStdout = False,
) -> None:
    """Run the edge alone (needs CLAUDEOPUS_SERVICE_TOKEN and an upstream URL)."""
    from claudeopus.cli.servers import run_edge
    from claudeopus.edge.settings import EdgeSettings

    _launch(
        lambda: EdgeSettings.from_env(
            control_target=control,
            http_address=http,
            upstream_url=upstream_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            access_log_stdout=_on_or_unset(access_log_stdout),
            log_level=log_level,
        ),
        run_edge,
    )


if __name__ == "__main__":
    app()
