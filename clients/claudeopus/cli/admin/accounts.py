"""``claudeopus admin accounts``: the accounts of your subtree."""

from __future__ import annotations

from typing import Annotated

import typer

from claudeopus.cli.admin._common import (
    DEFAULT_CONTROL,
    ControlOpt,
    JsonOpt,
    KeyOpt,
    call,
    choice,
    emit_message,
    need_key,
)
from claudeopus.cli.output import emit_json, emit_rows, to_dict

app = typer.Typer(help="Accounts of your subtree.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The account, accounts/N.")]
ROLES = ("reseller", "user")


@app.command("create")
def create(
    email: Annotated[str, typer.Option(help="Login email of the new account.")],
    role: Annotated[str, typer.Option(help="reseller or user.")] = "user",
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    parent: Annotated[str, typer.Option(help="Parent account (accounts/N); default: yours.")] = "",
    request_id: Annotated[str, typer.Option(help="Idempotency id: retries with it create nothing new.")] = "",
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a reseller or user account below PARENT."""
    choice(role, ROLES, "--role")
    account = call(
        control,
        need_key(key),
        as_json,
        lambda c: c.create_account(email=email, role=role, display_name=name, parent=parent, request_id=request_id),
    )
    emit_message("account", account, as_json)


@app.command("get")
def get(name: NameArg, control: ControlOpt = DEFAULT_CONTROL, key: KeyOpt = "", as_json: JsonOpt = False) -> None:
    """Show one account."""
    emit_message("account", call(control, need_key(key), as_json, lambda c: c.get_account(name)), as_json)


@app.command("list")
def list_(
    parent: Annotated[str, typer.Option(help="Whose children (accounts/N); default: yours.")] = "",
    role: Annotated[str | None, typer.Option(help="Only this role: reseller or user.")] = None,
    state: Annotated[str | None, typer.Option(help="Only this state: active or suspended.")] = None,
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """List the child accounts of PARENT, oldest first (all pages)."""
    choice(role, ROLES, "--role")
    choice(state, ("active", "suspended"), "--state")
    rows = call(
        control,
        need_key(key),
        as_json,
        lambda c: [to_dict(a) for a in c.iter_accounts(parent=parent, role=role, state=state)],
    )
    if as_json:
        emit_json({"accounts": rows})
    else:
        emit_rows("accounts", ["name", "email", "display_name", "role", "state", "create_time"], rows)


@app.command("update")
def update(
    name: NameArg,
    email: Annotated[str | None, typer.Option(help="New email.")] = None,
    display_name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    role: Annotated[str | None, typer.Option(help="New role: reseller or user.")] = None,
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Change email, display name or role; only the options given are changed."""
    choice(role, ROLES, "--role")
    if email is None and display_name is None and role is None:
        raise typer.BadParameter("give at least one of --email, --name, --role")
    account = call(
        control,
        need_key(key),
        as_json,
        lambda c: c.update_account(name, display_name=display_name, email=email, role=role),
    )
    emit_message("account", account, as_json)


@app.command("delete")
def delete(name: NameArg, control: ControlOpt = DEFAULT_CONTROL, key: KeyOpt = "", as_json: JsonOpt = False) -> None:
    """Delete an account without live keys or children (its usage history stays)."""
    call(control, need_key(key), as_json, lambda c: c.delete_account(name))
    if as_json:
        emit_json({"deleted": name})
    else:
        typer.echo(f"deleted {name}")


@app.command("suspend")
def suspend(name: NameArg, control: ControlOpt = DEFAULT_CONTROL, key: KeyOpt = "", as_json: JsonOpt = False) -> None:
    """Suspend an account: every key of its subtree stops at once."""
    emit_message("account", call(control, need_key(key), as_json, lambda c: c.suspend_account(name)), as_json)


@app.command("resume")
def resume(name: NameArg, control: ControlOpt = DEFAULT_CONTROL, key: KeyOpt = "", as_json: JsonOpt = False) -> None:
    """Lift a suspension."""
    emit_message("account", call(control, need_key(key), as_json, lambda c: c.resume_account(name)), as_json)


@app.command("set-password")
def set_password(
    name: Annotated[str, typer.Argument(help="The account, accounts/N; default: yours.")] = "",
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, envvar="CLAUDEOPUS_PASSWORD", help="New password."
        ),
    ] = "",
    current: Annotated[
        bool,
        typer.Option(
            "--current",
            help="Ask for your current password (never echoed): needed to change your own; implied without NAME.",
        ),
    ] = False,
    current_password: Annotated[
        str, typer.Option("--current-password", envvar="CLAUDEOPUS_CURRENT_PASSWORD", hidden=True)
    ] = "",
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Set the dashboard password (12+ characters) of an account; its sessions end."""
    if (current or not name) and not current_password:
        current_password = typer.prompt(
            "Current password (empty if none is set)", default="", hide_input=True, show_default=False
        )
    call(
        control,
        need_key(key),
        as_json,
        lambda c: c.set_password(password, name=name, current_password=current_password),
    )
    if as_json:
        emit_json({"password_set": name or "own account"})
    else:
        typer.echo("password set")
