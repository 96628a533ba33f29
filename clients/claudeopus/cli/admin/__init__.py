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
    DEFAULT_CONTROL,
    AdminOptions,
    ControlOpt,
    JsonOpt,
    KeyOpt,
    call,
    emit_message,
    need_key,
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
            envvar="CLAUDEOPUS_CONTROL_INSECURE",
            help="Allow plain-text gRPC to a control plane on another host (keys cross the network unencrypted).",
        ),
    ] = False,
) -> None:
    context.obj = AdminOptions(insecure=insecure)


app.add_typer(accounts.app, name="accounts")
app.add_typer(keys.app, name="keys")
app.add_typer(usage.app, name="usage")
app.add_typer(prices.app, name="prices")
app.add_typer(budgets.app, name="budgets")


@app.command()
def bootstrap(
    email: Annotated[str, typer.Option(help="Email of the root admin.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "Administrator",
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="The bootstrap token file control named at start (claudeopus-bootstrap.token)."
        ),
    ] = None,
    token: Annotated[
        str, typer.Option("--token", envvar="CLAUDEOPUS_BOOTSTRAP_TOKEN", help="The bootstrap token itself.")
    ] = "",
    control: ControlOpt = DEFAULT_CONTROL,
    as_json: JsonOpt = False,
) -> None:
    """Create the root admin and print its management key (once; needs control's one-time bootstrap token)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as error:
            raise typer.BadParameter(
                f"cannot read {str(token_file)!r}: {error.strerror}", param_hint="--token-file"
            ) from None
    done = call(control, None, as_json, lambda c: c.bootstrap_admin(email, name, token=token))
    if as_json:
        emit_json({"account": to_dict(done.account), "api_key": to_dict(done.api_key), "secret": done.secret})
        return
    emit_record("admin", {"account": done.account.name, "email": done.account.email, "key": done.api_key.name})
    typer.echo(f"management key (shown once): {done.secret}")


@app.command()
def login(
    email: Annotated[str, typer.Option(help="Account email.")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, envvar="CLAUDEOPUS_PASSWORD", help="Dashboard password.")
    ],
    control: ControlOpt = DEFAULT_CONTROL,
    as_json: JsonOpt = False,
) -> None:
    """Exchange email and password for a session token (use it as --key)."""
    reply = call(control, None, as_json, lambda c: c.login(email, password))
    if as_json:
        emit_json({**to_dict(reply), "account": to_dict(reply.account)})
        return
    emit_message("session", reply.account, False)
    typer.echo(f"session token (until {reply.expire_time.ToJsonString()}): {reply.session_token}")


@app.command()
def logout(control: ControlOpt = DEFAULT_CONTROL, key: KeyOpt = "", as_json: JsonOpt = False) -> None:
    """End the session whose token is --key (CLAUDEOPUS_ADMIN_KEY)."""
    call(control, need_key(key), as_json, lambda c: c.logout())
    if as_json:
        emit_json({"logged_out": True})
    else:
        typer.echo("logged out")


__all__ = ["app"]
