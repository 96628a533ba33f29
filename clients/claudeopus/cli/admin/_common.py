"""Options and plumbing shared by the admin sub-commands."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import click
import typer

from claudeopus import tls
from claudeopus.cli.output import emit_error, emit_json, emit_record, to_dict
from claudeopus.client import ClaudeOpusError, Client

T = TypeVar("T")
DEFAULT_CONTROL = "127.0.0.1:50051"

ControlOpt = Annotated[str, typer.Option("--control", envvar="CLAUDEOPUS_CONTROL", help="Control plane HOST:PORT.")]
KeyOpt = Annotated[
    str,
    typer.Option(
        "--key", envvar="CLAUDEOPUS_ADMIN_KEY", help="Management key (sk-co-...) or session token.", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TLS_SETTINGS = ("CLAUDEOPUS_CONTROL_CA", "CLAUDEOPUS_CONTROL_CLIENT_CERT", "CLAUDEOPUS_CONTROL_CLIENT_KEY")


@dataclass(frozen=True, slots=True)
class ControlTLS:
    """TLS to control for every admin command; all empty means plain text.

    Example::

        options = ControlTLS.from_env({"CLAUDEOPUS_CONTROL_CA": "ca.pem"})  # checks the files
    """

    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ControlTLS:
        env = os.environ if environ is None else environ
        found = cls(*(env.get(name, "") for name in TLS_SETTINGS))
        tls.check_client(found.ca, found.cert, found.key, names=TLS_SETTINGS)
        return found


@dataclass(frozen=True, slots=True)
class AdminOptions:
    """Options of ``claudeopus admin`` itself (before the sub-command), kept in the click context."""

    insecure: bool = False


def _insecure() -> bool:
    context = click.get_current_context(silent=True)
    found = context.find_object(AdminOptions) if context is not None else None
    return found is not None and found.insecure


def call(control: str, key: str | None, as_json: bool, work: Callable[[Client], T]) -> T:
    """Run ``work`` with a client; a failed call prints the error (JSON with --json) and exits 1.

    Unusable TLS files (CLAUDEOPUS_CONTROL_CA and the client pair), and plain text to another
    machine without ``claudeopus admin --insecure``, print one line and exit 2.
    """
    try:
        options = ControlTLS.from_env()
        client = Client(
            control, key=key, tls_ca=options.ca, tls_cert=options.cert, tls_key=options.key, insecure=_insecure()
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


def need_key(key: str) -> str:
    if not key:
        raise typer.BadParameter("pass --key or set CLAUDEOPUS_ADMIN_KEY", param_hint="--key")
    return key


def emit_message(title: str, message: Any, as_json: bool) -> None:
    if as_json:
        emit_json(to_dict(message))
    else:
        emit_record(title, {k: v for k, v in to_dict(message).items() if v not in ("", [], None)})


def choice(value: str | None, allowed: tuple[str, ...], hint: str) -> str | None:
    if value is not None and value not in allowed:
        raise typer.BadParameter(f"must be one of: {', '.join(allowed)}", param_hint=hint)
    return value
