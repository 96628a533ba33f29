"""Changing an API key: its name, scopes, allowed models and expiry, under the limits set above it.

A limit set by an account above the key's own may be widened (models from a list to a
superset or to none, a later expiry or none, one more scope) only by that account or one
above it (``KEY_LIMIT_SET_ABOVE``); anyone with access, the owner included, may narrow it,
and narrowing keeps the higher setter. A changed key fits the policy in force on its
account (:mod:`policies`). A revoked key cannot be changed (``KEY_NOT_LIVE``).

Example::

    key = await update_api_key(principal, 12, paths=["display_name"], update=KeyUpdate(display_name="ci"), now=now)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from claudeopus.control.domain import policies, validation
from claudeopus.control.domain.api_keys import key_in_subtree, minted, not_live, scopes_mask, valid_models
from claudeopus.control.domain.errors import InvalidArgument, PermissionDenied, Reason
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import ApiKey

UPDATABLE_FIELDS = ("display_name", "scopes", "allowed_models", "expire_time")


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """The new values of an UpdateApiKey request, as they came (validated here).

    ``expire_time`` is a protobuf Timestamp's ``(seconds, nanos)``, or None to
    clear the expiry.
    """

    display_name: str = ""
    scopes: Sequence[int] = ()
    allowed_models: Sequence[str] = ()
    expire_time: tuple[int, int] | None = None


def _changes(paths: tuple[str, ...], update: KeyUpdate, now: datetime) -> dict[str, Any]:
    """Column values for the fields in ``paths``, validated like create."""
    changes: dict[str, Any] = {}
    if "display_name" in paths:
        changes["display_name"] = validation.display_name("api_key.display_name", update.display_name)
    if "scopes" in paths:
        changes["scopes"] = scopes_mask(update.scopes)
    if "allowed_models" in paths:
        changes["allowed_models"] = valid_models(update.allowed_models) or None
    if "expire_time" in paths:
        expires_at = None
        if update.expire_time is not None:
            expires_at = validation.timestamp("api_key.expire_time", *update.expire_time)
            if expires_at <= now:
                raise InvalidArgument.field("api_key.expire_time", "must be in the future")
        changes["expires_at"] = expires_at
    return changes


# Each limit: its column, the column of its setter, the field named in errors, and whether a new
# value is wider than the old one.
_LIMITS: tuple[tuple[str, str, str, Callable[[Any, Any], bool]], ...] = (
    ("allowed_models", "models_set_by", "allowed_models", lambda old, new: policies.wider_models(old, new)),
    ("expires_at", "expiry_set_by", "expire_time", lambda old, new: old is not None and (new is None or new > old)),
    ("scopes", "scopes_set_by", "scopes", lambda old, new: bool(new & ~old)),
)


async def _fit(key: ApiKey, changes: dict[str, Any]) -> None:
    """Make the changed limits fit the policy in force on the key's account (in place)."""
    if not {"allowed_models", "expires_at", "scopes"} & changes.keys():
        return
    policy = await policies.policy_in_force(key.account)
    if "scopes" in changes:
        policies.fit_scopes(policy, changes["scopes"])
    if "allowed_models" in changes:
        changes["allowed_models"] = policies.fit_models(policy, changes["allowed_models"] or []) or None
    if "expires_at" in changes:
        policies.fit_expiry(policy, changes["expires_at"], key.created_at)


def _setters(principal: Principal, key: ApiKey, changes: dict[str, Any]) -> dict[str, int | None]:
    """The new setter of each limit that changes, or KEY_LIMIT_SET_ABOVE for a widening the caller may not make."""
    chain = key.account.ancestor_ids()
    caller = None if principal.account_id == key.account.id else principal.account_id
    setters: dict[str, int | None] = {}
    for column, setter_column, field, wider in _LIMITS:
        if column not in changes or changes[column] == getattr(key, column):
            continue
        set_by = getattr(key, setter_column)
        if wider(getattr(key, column), changes[column]) and not policies.may_widen(chain, principal.account_id, set_by):
            raise PermissionDenied(
                Reason.KEY_LIMIT_SET_ABOVE,
                f"api_key.{field}: this limit was set above you; you may narrow it, not widen it.",
            )
        setters[setter_column] = policies.higher(chain, set_by, caller)
    return setters


async def update_api_key(
    principal: Principal, key_id: int, *, paths: Sequence[str], update: KeyUpdate, now: datetime
) -> ApiKey:
    """Change the fields named by ``paths`` (an update mask, see :func:`validation.update_paths`) of a live key
    of the caller's subtree.

    Example::

        key = await update_api_key(principal, 12, paths=["display_name"], update=KeyUpdate(display_name="ci"), now=now)
    """
    changes = _changes(validation.update_paths(paths, UPDATABLE_FIELDS), update, now)
    key = await key_in_subtree(principal, key_id)
    if key.revoked_at is not None:
        raise not_live()
    await _fit(key, changes)
    setters = _setters(principal, key, changes)
    if "scopes" in changes:
        changes |= minted(principal, changes["scopes"])
    # Conditional on the key still being live and on the setters the check read, so a concurrent
    # revoke is never undone and a limit set from above meanwhile is never widened or taken over.
    held: dict[str, Any] = {}
    for column in setters:
        held |= policies.setter_is(column, getattr(key, column))
    if not await ApiKey.filter(id=key.id, revoked_at__isnull=True, **held).update(**changes, **setters):
        if await ApiKey.filter(id=key.id, revoked_at__isnull=True).exists():
            raise PermissionDenied(
                Reason.KEY_LIMIT_SET_ABOVE, "api_key: a limit was changed above you meanwhile; read the key and retry."
            )
        raise not_live()
    await key.refresh_from_db()
    await outlive_leases(api_key_id=key.id, now=now)  # a narrower key holds on every edge on return
    return key
