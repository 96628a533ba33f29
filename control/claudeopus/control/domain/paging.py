"""Opaque page tokens: signed, bound to the caller and to the query.

A token is ``base64url(json cursor) . base64url(hmac)``. The HMAC covers the
cursor and a *scope* string naming the caller and every filter of the query, so
a token cannot be forged, edited, or replayed by another caller or for another
query. The key is an installation-wide secret shared by all replicas.

Example::

    codec = PageTokenCodec(key)
    token = codec.encode("usage|caller=1|parent=1", {"before_id": 42})
    assert codec.decode("usage|caller=1|parent=1", token) == {"before_id": 42}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, TypeVar

from tortoise.models import Model
from tortoise.queryset import QuerySet

from claudeopus.control.domain.errors import InvalidArgument, Reason

Row = TypeVar("Row", bound=Model)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_SIG_BYTES = 16


def page_size(value: int) -> int:
    """Clamp ``page_size`` (AIP-158): 0 means the default, larger values the maximum."""
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokenCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, scope: str, body: bytes) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\0" + body, hashlib.sha256).digest()[:_SIG_BYTES]

    def encode(self, scope: str, cursor: dict[str, Any]) -> str:
        body = json.dumps(cursor, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(body)}.{_b64(self._sign(scope, body))}"

    def decode(self, scope: str, token: str) -> dict[str, Any]:
        invalid = InvalidArgument.field(
            "page_token", "is not a token from a previous call with these arguments", Reason.PAGE_TOKEN_INVALID
        )
        try:
            body_text, sig_text = token.split(".")
            body, sig = _unb64(body_text), _unb64(sig_text)
        except ValueError:
            raise invalid from None
        if not hmac.compare_digest(sig, self._sign(scope, body)):
            raise invalid
        try:
            cursor = json.loads(body)
        except ValueError:
            raise invalid from None
        if not isinstance(cursor, dict):
            raise invalid
        return cursor


async def keyset_page(
    query: QuerySet[Row],
    codec: PageTokenCodec,
    scope: str,
    token: str,
    limit: int,
    *,
    key: str,
    descending: bool = False,
) -> tuple[list[Row], str]:
    """One page of ``query`` ordered by the unique column ``key``, and the token for the next.

    The token carries only the last ``key`` seen, signed for ``scope``; ``limit``
    comes from :func:`page_size`.
    """
    if token:
        after = codec.decode(scope, token).get("after")
        if type(after) not in (int, str):
            raise InvalidArgument.field("page_token", "is malformed", Reason.PAGE_TOKEN_INVALID)
        query = query.filter(**{f"{key}__{'lt' if descending else 'gt'}": after})
    rows = await query.order_by(f"-{key}" if descending else key).limit(limit + 1)
    next_token = codec.encode(scope, {"after": getattr(rows[limit - 1], key)}) if len(rows) > limit else ""
    return rows[:limit], next_token
