"""Small validators shared by the domain modules; each raises InvalidArgument."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from claudeopus.control.domain.errors import InvalidArgument

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME = 200
MAX_REQUEST_ID = 64
MAX_MODEL = 200


def email(field: str, value: str) -> str:
    value = value.strip().lower()
    if not value or len(value) > 320 or not _EMAIL_RE.match(value) or _CONTROL_CHARS.search(value):
        raise InvalidArgument.field(field, "must be an email address like name@example.com")
    return value


def display_name(field: str, value: str) -> str:
    value = value.strip()
    if len(value) > MAX_NAME:
        raise InvalidArgument.field(field, f"must be at most {MAX_NAME} characters")
    if _CONTROL_CHARS.search(value):
        raise InvalidArgument.field(field, "must not contain control characters")
    return value


def request_id(field: str, value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID or not value.isprintable():
        raise InvalidArgument.field(field, f"must be at most {MAX_REQUEST_ID} printable characters")
    return value


def model_name(field: str, value: str) -> str:
    if not value or len(value) > MAX_MODEL or not value.isprintable():
        raise InvalidArgument.field(field, f"must be a model name of 1 to {MAX_MODEL} printable characters")
    return value


def uuid_value(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.field(field, "must be a UUID") from None


def timestamp(field: str, seconds: int, nanos: int) -> datetime:
    """A protobuf Timestamp's fields as an aware UTC datetime, or InvalidArgument."""
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgument.field(field, "has nanos outside 0..999999999")
    try:
        return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgument.field(field, "is outside the years 1..9999") from None


def non_negative(field: str, value: int) -> int:
    if value < 0:
        raise InvalidArgument.field(field, "must not be negative")
    return value


def update_paths(paths: Sequence[str], updatable: tuple[str, ...]) -> tuple[str, ...]:
    """The ``updatable`` fields an update mask names, in their order; ``*`` (AIP-134) means all, empty none."""
    if list(paths) == ["*"]:
        return updatable
    unknown = sorted({p for p in paths if p not in updatable})
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(updatable)}"
        )
    return tuple(f for f in updatable if f in paths)
