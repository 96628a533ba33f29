"""``claudeopus``: run the gateway (serve, control, edge) or manage it (admin)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from claudeopus.cli import admin
from claudeopus.cli.runtime import configure_logging, run

app = typer.Typer(help="ClaudeOpus: a self-hosted LLM API gateway for resellers.", no_args_is_help=True)
app.add_typer(admin.app, name="admin")

S = TypeVar("S")
LogLevel = Annotated[str, typer.Option("--log-level", envvar="CLAUDEOPUS_LOG_LEVEL", help="debug, info, warning.")]
AccessLogStdout = Annotated[
    bool, typer.Option("--access-log-stdout", help="Access log to stdout too (env CLAUDEOPUS_ACCESS_LOG_STDOUT=1).")
]
TlsCert = Annotated[
    str, typer.Option("--tls-cert", help="PEM certificate: serve HTTPS (env CLAUDEOPUS_TLS_CERT).", show_default=False)
]
TlsKey = Annotated[
    str, typer.Option("--tls-key", help="PEM private key of --tls-cert (env CLAUDEOPUS_TLS_KEY).", show_default=False)
]


def _launch(log_level: str, settings: Callable[[], S], main: Callable[[S, asyncio.Event], Awaitable[None]]) -> None:
    """Check settings (exit 2 with one line if wrong), then run until SIGINT/SIGTERM (exit 1 if start-up fails)."""
    try:
        configure_logging(log_level)
        checked = settings()
    except ValueError as error:
        typer.echo(f"claudeopus: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        run(lambda stop: main(checked, stop))
    except OSError as error:
        typer.echo(f"claudeopus: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    http: Annotated[str, typer.Option(envvar="CLAUDEOPUS_HTTP", help="Edge HTTP HOST:PORT.")] = "127.0.0.1:8080",
    grpc: Annotated[str, typer.Option(envvar="CLAUDEOPUS_GRPC", help="Control gRPC HOST:PORT.")] = "127.0.0.1:50051",
    database_url: Annotated[
        str, typer.Option(envvar="CLAUDEOPUS_DATABASE_URL", help="sqlite://PATH or postgres://...")
    ] = "sqlite://./claudeopus.db",
    upstream_url: Annotated[
        str, typer.Option(envvar="CLAUDEOPUS_UPSTREAM_URL", help="OpenAI-compatible base URL; none = demo upstream.")
    ] = "",
    log_level: LogLevel = "info",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
    access_log_stdout: AccessLogStdout = False,
    workers: Annotated[
        int,
        typer.Option(envvar="CLAUDEOPUS_WORKERS", help="Edge processes beside control; 0 = the edge in-process."),
    ] = 0,
) -> None:
    """Run control and edge together (one process by default; embedded SQLite by default)."""
    from claudeopus.cli.servers import ServeOptions, run_serve

    def settings() -> ServeOptions:
        return ServeOptions(
            http_address=http,
            grpc_address=grpc,
            database_url=database_url,
            upstream_url=upstream_url,
            access_log_stdout=access_log_stdout,
            tls_cert=tls_cert,
            tls_key=tls_key,
            workers=workers,
        )

    _launch(log_level, settings, run_serve)


@app.command()
def control(
    grpc: Annotated[str, typer.Option(help="gRPC HOST:PORT (env CLAUDEOPUS_GRPC).", show_default=False)] = "",
    database_url: Annotated[
        str, typer.Option(help="sqlite://PATH or postgres://... (env CLAUDEOPUS_DATABASE_URL).", show_default=False)
    ] = "",
    log_level: LogLevel = "info",
    tls_cert: Annotated[
        str, typer.Option(help="PEM certificate: gRPC over TLS (env CLAUDEOPUS_CONTROL_TLS_CERT).", show_default=False)
    ] = "",
    tls_key: Annotated[
        str, typer.Option(help="PEM private key of --tls-cert (env CLAUDEOPUS_CONTROL_TLS_KEY).", show_default=False)
    ] = "",
    client_ca: Annotated[
        str,
        typer.Option(
            help="PEM CA bundle: require client certificates it signed (env CLAUDEOPUS_CONTROL_CLIENT_CA).",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Run the control plane alone (needs CLAUDEOPUS_SERVICE_TOKEN, shared with the edge)."""
    from claudeopus.cli.servers import run_control
    from claudeopus.control.settings import ControlSettings

    _launch(
        log_level,
        lambda: ControlSettings.from_env(
            grpc_address=grpc, database_url=database_url, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=client_ca
        ),
        run_control,
    )


@app.command()
def edge(
    control: Annotated[str, typer.Option(help="Control HOST:PORT (env CLAUDEOPUS_CONTROL).", show_default=False)] = "",
    http: Annotated[str, typer.Option(help="HTTP HOST:PORT (env CLAUDEOPUS_HTTP).", show_default=False)] = "",
    upstream_url: Annotated[
        str, typer.Option(help="OpenAI-compatible base URL (env CLAUDEOPUS_UPSTREAM_URL).", show_default=False)
    ] = "",
    log_level: LogLevel = "info",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
    access_log_stdout: AccessLogStdout = False,
) -> None:
    """Run the edge alone (needs CLAUDEOPUS_SERVICE_TOKEN and an upstream URL)."""
    from claudeopus.cli.servers import run_edge
    from claudeopus.edge.settings import EdgeSettings

    _launch(
        log_level,
        lambda: EdgeSettings.from_env(
            control_target=control,
            http_address=http,
            upstream_url=upstream_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            access_log_stdout="1" if access_log_stdout else "",
        ),
        run_edge,
    )


if __name__ == "__main__":
    app()
