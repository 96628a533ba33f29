"""Resource names (``accounts/{id}``, ``apiKeys/{id}``) to ids and back."""

from __future__ import annotations

from claudeopus.control.domain.errors import InvalidArgument

ACCOUNTS = "accounts"
API_KEYS = "apiKeys"
USAGE_RECORDS = "usageRecords"
PRICES = "prices"
BUDGETS = "budgets"


def format_name(collection: str, ident: object) -> str:
    return f"{collection}/{ident}"


def parse_id(field: str, collection: str, name: str) -> int:
    """The numeric id in ``{collection}/{id}``."""
    prefix = collection + "/"
    raw = name.removeprefix(prefix)
    if not name.startswith(prefix) or not (raw.isascii() and raw.isdecimal()) or len(raw) > 18:
        raise InvalidArgument.field(field, f"must be a resource name like '{collection}/123'")
    return int(raw)


def parse_optional_id(field: str, collection: str, name: str) -> int | None:
    return parse_id(field, collection, name) if name else None
