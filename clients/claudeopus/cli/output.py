"""Printing results: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from claudeopus.client import ClaudeOpusError


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def emit_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def emit_record(title: str, fields: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in fields.items():
        table.add_row(name, _text(value))
    Console().print(table)


def emit_rows(title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_text(row.get(column, "")) for column in columns))
    Console().print(table)


def emit_error(error: ClaudeOpusError, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "error": {
                    "code": error.code.name,
                    "reason": error.reason,
                    "message": error.message,
                    "field_violations": error.field_violations,
                }
            }
        )
        return
    reason = f" [{error.reason}]" if error.reason else ""
    Console(stderr=True).print(f"[red]error[/red] {error.code.name}{reason}: {error.message}", highlight=False)


def _text(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
