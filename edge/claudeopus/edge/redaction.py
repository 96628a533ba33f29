"""What of an upstream's error may reach the client: its message, type, param and code, redacted.

The upstream's credentials, its organisation and project ids and anything key-like are the
reseller's business: they are replaced by ``[redacted]`` wherever an upstream error is relayed,
in a plain answer (forward.py) or as an event inside a stream (relay.py). Every other field of
the upstream's error object is dropped.

Example::

    redactor = Redactor(upstream_api_key="sk-upstream-secret")
    body = redactor.error_body({"message": "bad key sk-upstream-secret for org-Acme1", "code": "x"})
    assert b"sk-upstream" not in body and b"org-Acme1" not in body
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"
# Key-like and account-like tokens in upstream messages (sk-..., sk-ab****yz, org-...).
_SECRET_LIKE = re.compile(r"\b(?:sk|org|proj|key)-[A-Za-z0-9_*.\-]{3,}")
_FIELDS = ("type", "param", "code")
FALLBACK = "The upstream provider refused the request."


class Redactor:
    """Redacts the upstream's key and anything key- or account-like from upstream error text."""

    def __init__(self, upstream_api_key: str) -> None:
        self._upstream_key = upstream_api_key

    def text(self, text: str) -> str:
        if self._upstream_key:
            text = text.replace(self._upstream_key, REDACTED)
        return _SECRET_LIKE.sub(REDACTED, text)

    def error_body(self, upstream: dict[str, Any], fallback: str = FALLBACK) -> bytes:
        """OpenAI's error body made of ``upstream``'s message, type, param and code (strings only), redacted."""
        fields = {name: self._text_or_none(upstream.get(name)) for name in _FIELDS}
        message = self._text_or_none(upstream.get("message")) or fallback
        error = {"message": message, **fields, "type": fields["type"] or "invalid_request_error"}
        return orjson.dumps({"error": error})

    def _text_or_none(self, value: object) -> str | None:
        return self.text(value) if isinstance(value, str) else None


def error_object(payload: object) -> dict[str, Any] | None:
    """The error object of an upstream answer or event: ``{"error": {...}}``, a flat
    ``{"object": "error", "message": ...}`` as some compatible servers send, or any other
    payload with an ``error`` member (a string becomes the message; anything else is dropped
    and the fallback message used); None for a payload that is no error."""
    if not isinstance(payload, dict):
        return None
    if "error" in payload:
        inner = payload["error"]
        if isinstance(inner, dict):
            return inner
        return {"message": inner} if isinstance(inner, str) else {}
    if payload.get("object") == "error":
        return payload
    return None
