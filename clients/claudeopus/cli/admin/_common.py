"""Options and plumbing shared by the admin sub-commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from claudeopus import tls
from claudeopus.cli.admin.settings import AdminSettings
from claudeopus.cli.output import emit_error, emit_json, emit_record, to_dict
from claudeopus.client import ClaudeOpusError, Client
from claudeopus.settings import SettingsError

T = TypeVar("T")

ControlOpt = Annotated[
    str | None,
    typer.Option(
        "--control",
        help="Control plane HOST:PORT (env CLAUDEOPUS_CONTROL; default 127.0.0.1:50051).",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key", help="Management key (sk-co-...) or session token (env CLAUDEOPUS_ADMIN_KEY).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def read_settings(context: typer.Context, insecure: bool) -> None:
    """Read the admin settings once, for the command that follows (kept in the context); exit 2 if malformed."""
    try:
        context.obj = AdminSettings.from_env(insecure=True if insecure else None)
    except SettingsError as error:
        typer.echo(f"claudeopus: {error}", err=True)
        raise typer.Exit(2) from None


def _settings(context: typer.Context, control: str | None, key: str | None) -> AdminSettings:
    found = context.find_object(AdminSettings)
    if found is None:
        raise RuntimeError("admin commands run below `claudeopus admin`, which reads their settings")
    return found.with_overrides(control=control, key=key)


def connection(context: typer.Context, control: str | None, key: str | None) -> AdminSettings:
    """The admin settings with this command's --control and --key on top; a key is required."""
    settings = _settings(context, control, key)
    if not settings.key:
        raise typer.BadParameter("pass --key or set CLAUDEOPUS_ADMIN_KEY", param_hint="--key")
    return settings


def keyless(context: typer.Context, control: str | None) -> AdminSettings:
    """The admin settings with this command's --control on top, for the calls that need no key."""
    return _settings(context, control, "")


def call(settings: AdminSettings, as_json: bool, work: Callable[[Client], T]) -> T:
    """Run ``work`` with a client; a failed call prints the error (JSON with --json) and exits 1.

    Unusable TLS files (CLAUDEOPUS_CONTROL_CA and the client pair), and plain text to another
    machine without ``claudeopus admin --insecure``, print one line and exit 2.
    """
    try:
        settings.check_tls()
        client = Client(
            settings.control,
            key=settings.key or None,
            tls_ca=settings.tls_ca,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            insecure=settings.insecure,
        )
    except (tls.TLSConfigError, tls.PlainTextRefused) as error:
        typer.echo(f"claudeopus: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        with client:
            return work(client)
    except ClaudeOpusError as error:
        emit_error(error, as_json)
        raise typer.Exit(1) from None


def emit_message(title: str, message: Any, as_json: bool) -> None:
    if as_json:
        emit_json(to_dict(message))
    else:
        emit_record(title, {k: v for k, v in to_dict(message).items() if v not in ("", [], None)})


def choice(value: str | None, allowed: tuple[str, ...], hint: str) -> str | None:
    if value is not None and value not in allowed:
        raise typer.BadParameter(f"must be one of: {', '.join(allowed)}", param_hint=hint)
    return value
