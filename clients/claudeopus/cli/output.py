"""Printing results: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from claudeopus.client import ClaudeOpusError

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def to_dict(message: Message) -> dict[str, Any]:
    """Proto JSON, except that 64-bit integers stay numbers (token counts are not strings)."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _numbers(message.DESCRIPTOR, data)  # type: ignore[arg-type]  # upb and pure descriptors share the API
    return data


def _numbers(descriptor: Descriptor, data: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            for item in value if isinstance(value, list) else [value]:
                _numbers(field.message_type, item)


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
    """A table whose cells are never cut: ids must stay copyable, even if the terminal wraps lines."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(_text(row.get(column, "")) for column in columns))
    console = Console()
    needed = Measurement.get(Console(width=100_000), console.options.update(max_width=100_000), table).maximum
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)


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
