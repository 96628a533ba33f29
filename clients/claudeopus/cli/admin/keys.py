"""``claudeopus admin keys``: API keys."""

from __future__ import annotations

from datetime import datetime, timedelta
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
from claudeopus.cli.output import emit_json, emit_record, emit_rows, to_dict

app = typer.Typer(help="API keys.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The key, apiKeys/N.")]
SCOPES = ("inference", "management")


def _scopes(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        choice(value, SCOPES, "--scope")
    return values


def _emit_secret(title: str, key: object, secret: str, as_json: bool) -> None:
    if as_json:
        emit_json({"api_key": to_dict(key), "secret": secret})  # type: ignore[arg-type]
        return
    emit_record(title, {k: v for k, v in to_dict(key).items() if v not in ("", [], None)})  # type: ignore[arg-type]
    if secret:
        typer.echo(f"secret (shown once): {secret}")
    else:
        typer.echo("this request_id already created the key above; its secret was shown then")


@app.command("create")
def create(
    context: typer.Context,
    account: Annotated[str, typer.Option(help="Owning account (accounts/N); default: yours.")] = "",
    name: Annotated[str, typer.Option(help="Label of the key.")] = "",
    scope: Annotated[list[str] | None, typer.Option(help="inference (default) and/or management.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Allowed model (repeat); default: all.")] = None,
    expires: Annotated[datetime | None, typer.Option(help="Expiry time (ISO 8601, UTC).")] = None,
    request_id: Annotated[str, typer.Option(help="Idempotency id.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print its secret (shown this once only)."""
    scopes = _scopes(scope) or ["inference"]
    created = call(
        connection(context, control, key),
        as_json,
        lambda c: c.create_api_key(
            parent=account,
            display_name=name,
            scopes=scopes,
            allowed_models=model or [],
            expire_time=expires,
            request_id=request_id,
        ),
    )
    _emit_secret("API key", created.api_key, created.secret, as_json)


@app.command("get")
def get(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one key (never its secret)."""
    emit_message("API key", call(connection(context, control, key), as_json, lambda c: c.get_api_key(name)), as_json)


@app.command("list")
def list_(
    context: typer.Context,
    account: Annotated[str, typer.Option(help="Owning account (accounts/N); default: yours.")] = "",
    show_revoked: Annotated[bool, typer.Option(help="Include revoked keys.")] = False,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the keys of an account, newest first (all pages)."""
    rows = call(
        connection(context, control, key),
        as_json,
        lambda c: [to_dict(k) for k in c.iter_api_keys(parent=account, show_revoked=show_revoked)],
    )
    if as_json:
        emit_json({"api_keys": rows})
    else:
        columns = ["name", "prefix", "display_name", "scopes", "allowed_models", "expire_time", "revoke_time"]
        emit_rows("API keys", columns, rows)


@app.command("update")
def update(
    context: typer.Context,
    name: NameArg,
    display_name: Annotated[str | None, typer.Option("--name", help="New label.")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="New scopes (repeat).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="New allowed models (repeat).")] = None,
    all_models: Annotated[bool, typer.Option("--all-models", help="Allow every model.")] = False,
    expires: Annotated[datetime | None, typer.Option(help="New expiry (ISO 8601, UTC).")] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Remove the expiry.")] = False,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change label, scopes, allowed models or expiry; only the options given are changed."""
    models = [] if all_models else model
    if display_name is None and scope is None and models is None and expires is None and not no_expiry:
        raise typer.BadParameter("give at least one of --name, --scope, --model, --all-models, --expires, --no-expiry")
    updated = call(
        connection(context, control, key),
        as_json,
        lambda c: c.update_api_key(
            name,
            display_name=display_name,
            scopes=_scopes(scope),
            allowed_models=models,
            expire_time=expires,
            clear_expiry=no_expiry,
        ),
    )
    emit_message("API key", updated, as_json)


@app.command("revoke")
def revoke(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Revoke a key at once."""
    emit_message("API key", call(connection(context, control, key), as_json, lambda c: c.revoke_api_key(name)), as_json)


@app.command("rotate")
def rotate(
    context: typer.Context,
    name: NameArg,
    grace: Annotated[
        int, typer.Option(help="Seconds the old secret keeps working (max 30 days).", min=0, max=30 * 86400)
    ] = 0,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give the key a new secret (shown once); the old one works for --grace seconds more."""
    rotated = call(
        connection(context, control, key),
        as_json,
        lambda c: c.rotate_api_key(name, grace_period=timedelta(seconds=grace)),
    )
    _emit_secret("API key", rotated.api_key, rotated.secret, as_json)
