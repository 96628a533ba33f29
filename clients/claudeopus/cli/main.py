"""``claudeopus``: run the gateway (serve, control, edge) or manage it (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from claudeopus.cli import admin
from claudeopus.cli.runtime import configure_logging, run

app = typer.Typer(help="ClaudeOpus: a self-hosted LLM API gateway for resellers.", no_args_is_help=True)
app.add_typer(admin.app, name="admin")

LogLevel = Annotated[str, typer.Option("--log-level", envvar="CLAUDEOPUS_LOG_LEVEL", help="debug, info, warning.")]


def _fail(error: ValueError) -> typer.Exit:
    typer.echo(f"claudeopus: {error}", err=True)
    return typer.Exit(2)


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
) -> None:
    """Run control and edge together in one process (embedded SQLite by default)."""
    import os

    from claudeopus.cli.servers import ServeOptions, run_serve

    configure_logging(log_level)
    options = ServeOptions(
        http_address=http,
        grpc_address=grpc,
        database_url=database_url,
        upstream_url=upstream_url,
        upstream_api_key=os.environ.get("CLAUDEOPUS_UPSTREAM_API_KEY", ""),
    )
    run(lambda stop: run_serve(options, stop))


@app.command()
def control(
    grpc: Annotated[str, typer.Option(help="gRPC HOST:PORT (env CLAUDEOPUS_GRPC).", show_default=False)] = "",
    database_url: Annotated[
        str, typer.Option(help="sqlite://PATH or postgres://... (env CLAUDEOPUS_DATABASE_URL).", show_default=False)
    ] = "",
    log_level: LogLevel = "info",
) -> None:
    """Run the control plane alone (needs CLAUDEOPUS_SERVICE_TOKEN, shared with the edge)."""
    from claudeopus.cli.servers import run_control
    from claudeopus.control.settings import ControlSettings

    configure_logging(log_level)
    try:
        settings = ControlSettings.from_env(grpc_address=grpc, database_url=database_url)
    except ValueError as error:
        raise _fail(error) from None
    run(lambda stop: run_control(settings, stop))


@app.command()
def edge(
    control: Annotated[str, typer.Option(help="Control HOST:PORT (env CLAUDEOPUS_CONTROL).", show_default=False)] = "",
    http: Annotated[str, typer.Option(help="HTTP HOST:PORT (env CLAUDEOPUS_HTTP).", show_default=False)] = "",
    upstream_url: Annotated[
        str, typer.Option(help="OpenAI-compatible base URL (env CLAUDEOPUS_UPSTREAM_URL).", show_default=False)
    ] = "",
    log_level: LogLevel = "info",
) -> None:
    """Run the edge alone (needs CLAUDEOPUS_SERVICE_TOKEN and an upstream URL)."""
    from claudeopus.cli.servers import run_edge
    from claudeopus.edge.settings import EdgeSettings

    configure_logging(log_level)
    try:
        settings = EdgeSettings.from_env(control_target=control, http_address=http, upstream_url=upstream_url)
    except ValueError as error:
        raise _fail(error) from None
    run(lambda stop: run_edge(settings, stop))


if __name__ == "__main__":
    app()
