"""``claudeopus admin``: every management call through the generated client.

Human-readable tables by default, ``--json`` everywhere. The control plane and
the credential come from ``--control`` / ``--key`` or ``CLAUDEOPUS_CONTROL`` /
``CLAUDEOPUS_ADMIN_KEY`` (a management key or a session token from ``login``). TLS to
control: ``CLAUDEOPUS_CONTROL_CA`` (plus ``CLAUDEOPUS_CONTROL_CLIENT_CERT`` / ``_KEY`` when
control requires client certificates), the same variables the edge reads. Plain text to a
host other than this machine is refused unless ``claudeopus admin --insecure ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from claudeopus.cli.admin import accounts, budgets, keys, prices, usage
from claudeopus.cli.admin._common import (
    ControlOpt,
    JsonOpt,
    KeyOpt,
    call,
    connection,
    emit_message,
    keyless,
    read_settings,
)
from claudeopus.cli.output import emit_json, emit_record, to_dict

app = typer.Typer(
    help="Manage accounts, keys, usage, prices and budgets over gRPC. TLS to control: set CLAUDEOPUS_CONTROL_CA "
    "(and CLAUDEOPUS_CONTROL_CLIENT_CERT / CLAUDEOPUS_CONTROL_CLIENT_KEY for mutual TLS).",
    no_args_is_help=True,
)


@app.callback()
def options(
    context: typer.Context,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow plain-text gRPC to a control plane on another host (keys cross the network unencrypted; "
            "env CLAUDEOPUS_CONTROL_INSECURE=1).",
        ),
    ] = False,
) -> None:
    read_settings(context, insecure)


app.add_typer(accounts.app, name="accounts")
app.add_typer(keys.app, name="keys")
app.add_typer(usage.app, name="usage")
app.add_typer(prices.app, name="prices")
app.add_typer(budgets.app, name="budgets")


@app.command()
def bootstrap(
    context: typer.Context,
    email: Annotated[str, typer.Option(help="Email of the root admin.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "Administrator",
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="The bootstrap token file control named at start (claudeopus-bootstrap.token)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", help="The bootstrap token itself (env CLAUDEOPUS_BOOTSTRAP_TOKEN).", show_default=False
        ),
    ] = None,
    control: ControlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the root admin and print its management key (once; needs control's one-time bootstrap token)."""
    settings = keyless(context, control)
    if token is None:
        token = settings.bootstrap_token
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as error:
            raise typer.BadParameter(
                f"cannot read {str(token_file)!r}: {error.strerror}", param_hint="--token-file"
            ) from None
    done = call(settings, as_json, lambda c: c.bootstrap_admin(email, name, token=token))
    if as_json:
        emit_json({"account": to_dict(done.account), "api_key": to_dict(done.api_key), "secret": done.secret})
        return
    emit_record("admin", {"account": done.account.name, "email": done.account.email, "key": done.api_key.name})
    typer.echo(f"management key (shown once): {done.secret}")


@app.command()
def login(
    context: typer.Context,
    email: Annotated[str, typer.Option(help="Account email.")],
    password: Annotated[
        str | None,
        typer.Option(
            help="Dashboard password (env CLAUDEOPUS_PASSWORD; asked for when neither is given).", show_default=False
        ),
    ] = None,
    control: ControlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Exchange email and password for a session token (use it as --key)."""
    settings = keyless(context, control)
    if password is None:
        password = settings.password or typer.prompt("Password", hide_input=True)
    reply = call(settings, as_json, lambda c: c.login(email, password))
    if as_json:
        emit_json({**to_dict(reply), "account": to_dict(reply.account)})
        return
    emit_message("session", reply.account, False)
    typer.echo(f"session token (until {reply.expire_time.ToJsonString()}): {reply.session_token}")


@app.command()
def logout(context: typer.Context, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """End the session whose token is --key (CLAUDEOPUS_ADMIN_KEY)."""
    call(connection(context, control, key), as_json, lambda c: c.logout())
    if as_json:
        emit_json({"logged_out": True})
    else:
        typer.echo("logged out")


__all__ = ["app"]
