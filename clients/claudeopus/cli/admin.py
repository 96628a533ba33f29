"""``claudeopus admin``: management calls through the generated client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from claudeopus.cli.output import emit_error, emit_json, emit_record, emit_rows, to_dict
from claudeopus.client import ClaudeOpusClient, ClaudeOpusError

T = TypeVar("T")

ControlOpt = Annotated[str, typer.Option("--control", envvar="CLAUDEOPUS_CONTROL", help="Control plane HOST:PORT.")]
KeyOpt = Annotated[
    str,
    typer.Option("--key", envvar="CLAUDEOPUS_ADMIN_KEY", help="Management key (sk-co-...).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_CONTROL = "127.0.0.1:50051"

app = typer.Typer(help="Manage accounts, keys and usage over gRPC.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts of your subtree.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
usage_app = typer.Typer(help="Usage records.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(usage_app, name="usage")


def _call(control: str, key: str | None, as_json: bool, work: Callable[[ClaudeOpusClient], Awaitable[T]]) -> T:
    async def runner() -> T:
        async with ClaudeOpusClient(control, key=key) as client:
            return await work(client)

    try:
        return asyncio.run(runner())
    except ClaudeOpusError as error:
        emit_error(error, as_json)
        raise typer.Exit(1) from None


def _need_key(key: str) -> str:
    if not key:
        raise typer.BadParameter("pass --key or set CLAUDEOPUS_ADMIN_KEY", param_hint="--key")
    return key


@app.command()
def bootstrap(
    email: Annotated[str, typer.Option(help="Email of the root admin.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "Administrator",
    control: ControlOpt = DEFAULT_CONTROL,
    as_json: JsonOpt = False,
) -> None:
    """Create the root admin and print its management key (once; refused when an admin exists)."""
    done = _call(control, None, as_json, lambda c: c.bootstrap_admin(email, name))
    if as_json:
        emit_json({"account": to_dict(done.account), "api_key": to_dict(done.api_key), "secret": done.secret})
        return
    emit_record("admin", {"account": done.account.name, "email": done.account.email, "key": done.api_key.name})
    typer.echo(f"management key (shown once): {done.secret}")


@accounts_app.command("create")
def accounts_create(
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
    if role not in ("reseller", "user"):
        raise typer.BadParameter("must be 'reseller' or 'user'", param_hint="--role")
    account = _call(
        control,
        _need_key(key),
        as_json,
        lambda c: c.create_account(email=email, role=role, display_name=name, parent=parent, request_id=request_id),
    )
    _emit_message("account", account, as_json)


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Owning account (accounts/N); default: yours.")] = "",
    name: Annotated[str, typer.Option(help="Label of the key.")] = "",
    scope: Annotated[list[str] | None, typer.Option(help="inference (default) and/or management.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Allowed model (repeat); default: all.")] = None,
    expires: Annotated[datetime | None, typer.Option(help="Expiry time (ISO 8601, UTC).")] = None,
    request_id: Annotated[str, typer.Option(help="Idempotency id.")] = "",
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print its secret (shown this once only)."""
    scopes = scope or ["inference"]
    for value in scopes:
        if value not in ("inference", "management"):
            raise typer.BadParameter("must be 'inference' or 'management'", param_hint="--scope")
    created = _call(
        control,
        _need_key(key),
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
    if as_json:
        emit_json({"api_key": to_dict(created.api_key), "secret": created.secret})
        return
    emit_record("API key", _fields(to_dict(created.api_key)))
    if created.secret:
        typer.echo(f"secret (shown once): {created.secret}")
    else:
        typer.echo("this request_id already created the key above; its secret was shown then")


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key, apiKeys/N.")],
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key at once."""
    revoked = _call(control, _need_key(key), as_json, lambda c: c.revoke_api_key(name))
    _emit_message("API key", revoked, as_json)


@usage_app.command("list")
def usage_list(
    account: Annotated[str, typer.Option(help="Subtree root (accounts/N); default: yours.")] = "",
    api_key: Annotated[str, typer.Option("--api-key", help="Only this key (apiKeys/N).")] = "",
    limit: Annotated[int, typer.Option(help="At most this many records (newest first).", min=1)] = 50,
    control: ControlOpt = DEFAULT_CONTROL,
    key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """List usage records of your subtree, newest first."""

    async def collect(client: ClaudeOpusClient) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        async for record in client.iter_usage_records(parent=account, api_key=api_key, page_size=min(limit, 1000)):
            rows.append(to_dict(record))
            if len(rows) >= limit:
                break
        return rows

    rows = _call(control, _need_key(key), as_json, collect)
    if as_json:
        emit_json({"usage_records": rows})
        return
    columns = ["create_time", "request_id", "api_key", "model", "input_tokens", "output_tokens", "status", "source"]
    emit_rows("usage records", columns, rows)


def _emit_message(title: str, message: Any, as_json: bool) -> None:
    if as_json:
        emit_json(to_dict(message))
    else:
        emit_record(title, _fields(to_dict(message)))


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in ("", [], None)}
