"""The hot path's key checks: may this key hash serve inference now, and this model?

Every check reads the key's context (:mod:`~claudeopus.control.domain.auth_cache`: the key,
its account's state, its chain's policies, budgets and prices), cached per auth epoch when a
cache is given. A refusal is the domain error the edge relays (KEY_INVALID, KEY_EXPIRED,
ACCOUNT_SUSPENDED, MODEL_NOT_ALLOWED, MODEL_NOT_AVAILABLE, ...).

Example::

    context = await key_context(key_hash, now, cache)
    price = await check_served(context, "gpt-x")   # raises unless the key may use a priced model
"""

from __future__ import annotations

from datetime import datetime

from claudeopus.control.domain import prices
from claudeopus.control.domain.auth_cache import AuthCache, KeyContext, load_context
from claudeopus.control.domain.errors import InvalidArgument, PermissionDenied, Reason, Unauthenticated
from claudeopus.control.domain.principal import check_key, suspended
from claudeopus.control.models import Scope

KEY_HASH_BYTES = 32


def key_hash_hex(value: bytes) -> str:
    if len(value) != KEY_HASH_BYTES:
        raise InvalidArgument.field("key_hash", "must be the 32-byte SHA-256 of the key")
    return value.hex()


async def key_context(key_hash: bytes, now: datetime, cache: AuthCache | None = None) -> KeyContext:
    """The context of a key that may serve inference at ``now``, or the denial (cached when ``cache`` is given)."""
    hex_hash = key_hash_hex(key_hash)
    context = await (cache.context(hex_hash) if cache is not None else load_context(hex_hash))
    return usable(context, hex_hash, now)


def usable(context: KeyContext | None, hex_hash: str, now: datetime) -> KeyContext:
    """``context`` if its key may serve inference at ``now``; else the denial."""
    check_key(None if context is None else context.key, hex_hash, Scope.INFERENCE, now)
    assert context is not None  # check_key refused a missing key
    if context.suspended:
        raise suspended()
    if context.policy.outlived(context.key, now):  # older than the longest lifetime set above it
        raise Unauthenticated(Reason.KEY_EXPIRED, "This API key has expired.")
    return context


def allowed_models(context: KeyContext) -> list[str]:
    """The models the key may use (empty: every model): its own list within its account policies."""
    allowed = context.policy.models_for(context.key.allowed_models)
    if allowed is None:
        return []
    if not allowed:
        raise PermissionDenied(Reason.MODEL_NOT_ALLOWED, "This API key may not use any model.")
    return sorted(allowed)


def check_model(context: KeyContext, model: str) -> None:
    allowed = context.policy.models_for(context.key.allowed_models)
    if allowed is not None and model not in allowed:
        raise PermissionDenied(Reason.MODEL_NOT_ALLOWED, f"This API key may not use the model '{model}'.")


async def check_served(context: KeyContext, model: str) -> prices.PriceInForce:
    """The price in force for ``model`` if the key may use it; a model without one is not served.

    Unpriced, a model would cost nothing and escape every cost budget; an explicit zero price
    serves it for free. The price comes from the key's context (read once per model and epoch).
    """
    check_model(context, model)
    price = await context.price(model)
    if not price.priced:
        raise PermissionDenied(
            Reason.MODEL_NOT_AVAILABLE, f"The model '{model}' does not exist or is not available to this API key."
        )
    return price
