"""``claudeopus admin``: every management call through the generated client.

Human-readable tables by default, ``--json`` everywhere. The control plane and
the credential come from ``--control`` / ``--key`` or ``CLAUDEOPUS_CONTROL`` /
``CLAUDEOPUS_ADMIN_KEY`` (a management key or a session token from ``login``). TLS to
control: ``CLAUDEOPUS_CONTROL_CA`` (plus ``CLAUDEOPUS_CONTROL_CLIENT_CERT`` / ``_KEY`` when
control requires client certificates), the same variables the edge reads.
"""

from __future__ import annotations

from typing import Annotated

import typer

from claudeopus.cli.admin import accounts, budgets, keys, prices, usage
from claudeopus.cli.admin._common import DEFAULT_CONTROL, ControlOpt, JsonOpt, call, emit_message
from claudeopus.cli.output import emit_json, emit_record, to_dict

app = typer.Typer(
    help="Manage accounts, keys, usage, prices and budgets over gRPC. TLS to control: set CLAUDEOPUS_CONTROL_CA "
    "(and CLAUDEOPUS_CONTROL_CLIENT_CERT / CLAUDEOPUS_CONTROL_CLIENT_KEY for mutual TLS).",
    no_args_is_help=True,
)
app.add_typer(accounts.app, name="accounts")
app.add_typer(keys.app, name="keys")
app.add_typer(usage.app, name="usage")
app.add_typer(prices.app, name="prices")
app.add_typer(budgets.app, name="budgets")


@app.command()
def bootstrap(
    email: Annotated[str, typer.Option(help="Email of the root admin.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "Administrator",
    control: ControlOpt = DEFAULT_CONTROL,
    as_json: JsonOpt = False,
) -> None:
    """Create the root admin and print its management key (once; refused when an admin exists)."""
    done = call(control, None, as_json, lambda c: c.bootstrap_admin(email, name))
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


__all__ = ["app"]
