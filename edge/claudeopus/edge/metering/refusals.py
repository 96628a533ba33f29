"""Control's refusals as the OpenAI errors the client gets, and the key hash control knows a key by.

If control cannot be reached in time the edge fails closed with 503 and forwards nothing.
"""

from __future__ import annotations

import logging

from claudeopus import keys
from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.edge import errors
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.types import KeyInfo

__all__ = [
    "UNAVAILABLE_MESSAGE",
    "AuthorizeTimedOut",
    "key_hash",
    "openai_error",
    "timed_out",
    "unavailable",
    "verified",
]

_log = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = "The gateway could not check your API key right now; nothing was forwarded. Please retry."


class AuthorizeTimedOut(errors.ControlUnavailable):
    """Authorize passed its deadline: control may still have reserved, so the edge releases it."""


def timed_out() -> AuthorizeTimedOut:
    """Authorize passed its deadline after it was sent (a fresh error per request)."""
    return AuthorizeTimedOut(UNAVAILABLE_MESSAGE, code="control_unavailable")


def unavailable() -> errors.ControlUnavailable:
    """Control could not answer in time (a fresh error per request: the forwarder adds headers to it)."""
    return errors.ControlUnavailable(UNAVAILABLE_MESSAGE, code="control_unavailable")


def openai_error(error: ClaudeOpusError) -> errors.OpenAIError:
    """Control's refusal of a key or a request, as the OpenAI error the client gets."""
    reason, message = error.reason, error.message
    if reason == "KEY_INVALID":
        return errors.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    if reason == "KEY_REVOKED":
        return errors.AuthenticationFailed(message, code="api_key_revoked")
    if reason == "KEY_EXPIRED":
        return errors.AuthenticationFailed(message, code="api_key_expired")
    if reason == "KEY_ROTATED":
        return errors.AuthenticationFailed(message, code="api_key_rotated")
    if reason in ("KEY_SCOPE_DENIED", "ACCOUNT_SUSPENDED"):
        return errors.PermissionDenied(message, code=reason.lower())
    if reason == "MODEL_NOT_ALLOWED":
        return errors.PermissionDenied(message, code="model_not_allowed", param="model")
    if reason == "MODEL_NOT_AVAILABLE":
        return errors.PermissionDenied(message, code="model_not_available", param="model")
    if reason == "BUDGET_EXHAUSTED":
        return errors.QuotaExceeded(message, code="insufficient_quota")
    if reason == "FIELD_INVALID":
        field = next(iter(error.field_violations), None)
        return errors.BadRequest(message, code="invalid_value", param=field)
    if reason == "SERVICE_CREDENTIAL_INVALID":
        _log.error("control refused the edge's service token; check CLAUDEOPUS_SERVICE_TOKEN on both")
    elif not isinstance(error, UnavailableError):
        _log.error("authorization failed with %s (%s)", error.code.name, reason or "no reason")
    return unavailable()


def key_hash(secret: str) -> bytes:
    """The SHA-256 control knows a key by; a string that cannot be a key is refused here."""
    if not keys.looks_like_secret(secret):
        raise errors.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return keys.hash_secret_bytes(secret)


async def verified(control: ControlPort, hashed: bytes) -> KeyInfo:
    """What the key may use, or control's refusal of it as the OpenAI error the client gets."""
    try:
        return await control.verify(hashed)
    except ClaudeOpusError as error:
        raise openai_error(error) from None
