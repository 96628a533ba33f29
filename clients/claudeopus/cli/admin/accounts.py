"""``claudeopus admin accounts``: the accounts of your subtree."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from claudeopus.cli.admin._common import (
    ControlOpt,
    JsonOpt,
    KeyOpt,
    call,
    choice,
    connection,
    emit_message,
)
from claudeopus.cli.output import emit_json, emit_rows, to_dict

app = typer.Typer(help="Accounts of your subtree.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The account, accounts/N.")]
ROLES = ("reseller", "user")


@app.command("create")
def create(
    context: typer.Context,
    email: Annotated[str, typer.Option(help="Login email of the new account.")],
    role: Annotated[str, typer.Option(help="reseller or user.")] = "user",
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    parent: Annotated[str, typer.Option(help="Parent account (accounts/N); default: yours.")] = "",
    request_id: Annotated[str, typer.Option(help="Idempotency id: retries with it create nothing new.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a reseller or user account below PARENT."""
    choice(role, ROLES, "--role")
    account = call(
        connection(context, control, key),
        as_json,
        lambda c: c.create_account(email=email, role=role, display_name=name, parent=parent, request_id=request_id),
    )
    emit_message("account", account, as_json)


@app.command("get")
def get(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one account."""
    emit_message("account", call(connection(context, control, key), as_json, lambda c: c.get_account(name)), as_json)


@app.command("list")
def list_(
    context: typer.Context,
    parent: Annotated[str, typer.Option(help="Whose children (accounts/N); default: yours.")] = "",
    role: Annotated[str | None, typer.Option(help="Only this role: reseller or user.")] = None,
    state: Annotated[str | None, typer.Option(help="Only this state: active or suspended.")] = None,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the child accounts of PARENT, oldest first (all pages)."""
    choice(role, ROLES, "--role")
    choice(state, ("active", "suspended"), "--state")
    rows = call(
        connection(context, control, key),
        as_json,
        lambda c: [to_dict(a) for a in c.iter_accounts(parent=parent, role=role, state=state)],
    )
    if as_json:
        emit_json({"accounts": rows})
    else:
        emit_rows("accounts", ["name", "email", "display_name", "role", "state", "create_time"], rows)


@app.command("update")
def update(
    context: typer.Context,
    name: NameArg,
    email: Annotated[str | None, typer.Option(help="New email.")] = None,
    display_name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    role: Annotated[str | None, typer.Option(help="New role: reseller or user.")] = None,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change email, display name or role; only the options given are changed."""
    choice(role, ROLES, "--role")
    if email is None and display_name is None and role is None:
        raise typer.BadParameter("give at least one of --email, --name, --role")
    account = call(
        connection(context, control, key),
        as_json,
        lambda c: c.update_account(name, display_name=display_name, email=email, role=role),
    )
    emit_message("account", account, as_json)


@app.command("delete")
def delete(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete an account without live keys or children (its usage history stays)."""
    call(connection(context, control, key), as_json, lambda c: c.delete_account(name))
    if as_json:
        emit_json({"deleted": name})
    else:
        typer.echo(f"deleted {name}")


@app.command("suspend")
def suspend(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Suspend an account: every key of its subtree stops at once."""
    emit_message(
        "account", call(connection(context, control, key), as_json, lambda c: c.suspend_account(name)), as_json
    )


@app.command("resume")
def resume(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Lift a suspension."""
    emit_message("account", call(connection(context, control, key), as_json, lambda c: c.resume_account(name)), as_json)


@app.command("set-password")
def set_password(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="The account, accounts/N; default: yours.")] = "",
    password: Annotated[
        str | None,
        typer.Option(
            help="New password (env CLAUDEOPUS_PASSWORD; asked for twice when neither is given).", show_default=False
        ),
    ] = None,
    current: Annotated[
        bool,
        typer.Option(
            "--current",
            help="Ask for your current password (never echoed): needed to change your own; implied without NAME.",
        ),
    ] = False,
    current_password: Annotated[str | None, typer.Option("--current-password", hidden=True)] = None,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the dashboard password (12+ characters) of an account; its sessions end."""
    settings = connection(context, control, key)
    if password is None:
        password = settings.password or typer.prompt("Password", default="", hide_input=True, confirmation_prompt=True)
    if current_password is None:
        current_password = settings.current_password
    if (current or not name) and not current_password:
        current_password = typer.prompt(
            "Current password (empty if none is set)", default="", hide_input=True, show_default=False
        )
    call(settings, as_json, lambda c: c.set_password(password, name=name, current_password=current_password))
    if as_json:
        emit_json({"password_set": name or "own account"})
    else:
        typer.echo("password set")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _lifetime(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or plain seconds) as a duration."""
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "s")
    if not number.isdecimal() or int(number) == 0:
        raise typer.BadParameter("a positive duration like 30d, 12h, 90m or 3600s", param_hint="--max-key-lifetime")
    return timedelta(seconds=int(number) * _UNITS[unit])


@app.command("policy")
def policy(
    context: typer.Context,
    name: NameArg,
    allowed_models: Annotated[
        str | None, typer.Option(help="Models keys below may use, comma-separated; '' allows every model.")
    ] = None,
    management_keys: Annotated[
        bool | None,
        typer.Option("--management-keys/--no-management-keys", help="Whether management keys may exist below."),
    ] = None,
    max_key_lifetime: Annotated[
        str | None, typer.Option(help="Longest key lifetime, e.g. 30d; 'none' removes the bound.")
    ] = None,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the key policy of an account below yours; only the options given change.

    The policy bounds every key of the account's subtree. You may narrow a policy an account above
    you set, never widen it.
    """
    if allowed_models is None and management_keys is None and max_key_lifetime is None:
        raise typer.BadParameter("give at least one of --allowed-models, --[no-]management-keys, --max-key-lifetime")
    models = None if allowed_models is None else [m.strip() for m in allowed_models.split(",") if m.strip()]
    clear = max_key_lifetime == "none"
    lifetime = None if max_key_lifetime is None or clear else _lifetime(max_key_lifetime)
    account = call(
        connection(context, control, key),
        as_json,
        lambda c: c.set_account_policy(
            name,
            allowed_models=models,
            deny_management_keys=None if management_keys is None else not management_keys,
            max_key_lifetime=lifetime,
            clear_max_key_lifetime=clear,
        ),
    )
    emit_message("account", account, as_json)
