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
from typing import Any

from claudeopus.control.domain.errors import InvalidArgument, Reason

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
