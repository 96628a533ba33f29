"""API keys: issue, get, list, update, revoke, rotate. A secret is shown once and never stored.

Every lookup is confined to the caller's subtree (anything outside it is not
found). A revoked key is final: it can be read and listed, not changed or
rotated (``KEY_NOT_LIVE``).

Limits hold downward. A key records who issued it (``issued_by``) and who last set
each of its limits (``models_set_by``, ``expiry_set_by``, ``scopes_set_by``; None: the
key's own account). A limit set by an account above the key's own may be widened
(models from a list to a superset or to none, a later expiry or none, one more scope)
only by that account or one above it (``KEY_LIMIT_SET_ABOVE``); anyone with access,
the owner included, may narrow it, and narrowing keeps the higher setter. Every key
created or changed fits the policy in force on its account (:mod:`policies`).
Rotation changes only the secret: limits and setters stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from claudeopus import keys
from claudeopus.control.domain import policies, validation
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.ledger.leases.fence import LONGEST_WAIT, outlive_leases
from claudeopus.control.models import Account, ApiKey, Scope

MAX_GRACE_PERIOD = timedelta(days=30)
UPDATABLE_FIELDS = ("display_name", "scopes", "allowed_models", "expire_time")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A stored key plus its secret; ``secret`` is empty when a retried request found the key."""

    key: ApiKey
    secret: str


async def issue_key(
    account: Account,
    *,
    display_name: str,
    scopes: int,
    allowed_models: Sequence[str] = (),
    expires_at: datetime | None = None,
    request_id: str | None = None,
    issued_by: int | None = None,
    minted_by_session: int | None = None,
) -> IssuedKey:
    """Store a new key; ``issued_by`` (default: ``account``) also becomes the setter of its limits
    when it is an account above ``account``."""
    issuer = account.id if issued_by is None else issued_by
    above = None if issuer == account.id else issuer
    secret = keys.new_secret()
    key = await ApiKey.create(
        account=account,
        key_hash=keys.hash_secret(secret),
        prefix=keys.display_prefix(secret),
        display_name=display_name,
        scopes=scopes,
        allowed_models=list(allowed_models) or None,
        expires_at=expires_at,
        create_request_id=request_id,
        issued_by=issuer,
        models_set_by=above if allowed_models else None,
        expiry_set_by=above if expires_at is not None else None,
        scopes_set_by=above,
        minted_by_session=minted_by_session,
    )
    return IssuedKey(key=key, secret=secret)


def _scopes(values: Sequence[int]) -> int:
    mask = 0
    for index, value in enumerate(values):
        try:
            mask |= Scope(value)
        except ValueError:
            raise InvalidArgument.field(
                f"api_key.scopes[{index}]", "must be SCOPE_INFERENCE or SCOPE_MANAGEMENT"
            ) from None
    return mask or Scope.INFERENCE


def _models(values: Sequence[str]) -> list[str]:
    return policies.valid_models(values, "api_key.allowed_models")


async def create_api_key(
    principal: Principal,
    *,
    account: Account,
    display_name: str,
    scopes: Sequence[int],
    allowed_models: Sequence[str],
    expires_at: datetime | None,
    request_id: str,
    now: datetime,
) -> IssuedKey:
    """Issue a key for ``account`` (already checked to be in the caller's subtree).

    The key fits the policy in force on ``account`` (an empty model list becomes the policy's);
    the limits a caller above ``account`` sets are recorded as set by it.
    """
    name = validation.display_name("api_key.display_name", display_name)
    mask = _scopes(scopes)
    models = _models(allowed_models)
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument.field("api_key.expire_time", "must be in the future")
    rid = validation.request_id("request_id", request_id)
    policy = await policies.policy_in_force(account)
    policies.fit_scopes(policy, mask)
    models = policies.fit_models(policy, models)
    policies.fit_expiry(policy, expires_at, now)
    wanted = (name, mask, models or None, expires_at)
    if rid is not None:
        earlier = await ApiKey.get_or_none(account_id=account.id, create_request_id=rid)
        if earlier is not None:
            return _same_request(earlier, wanted)
    try:
        async with in_transaction():
            # Lock the owner so a concurrent DeleteAccount cannot leave a live key on a deleted account.
            if not await Account.filter(id=account.id, deleted_at__isnull=True).select_for_update().exists():
                raise NotFound(Reason.RESOURCE_NOT_FOUND, "parent: account not found.")
            return await issue_key(
                account,
                display_name=name,
                scopes=mask,
                allowed_models=models,
                expires_at=expires_at,
                request_id=rid,
                issued_by=principal.account_id,
                minted_by_session=principal.session_origin,
            )
    except IntegrityError:
        earlier = await ApiKey.get_or_none(account_id=account.id, create_request_id=rid)
        if rid is None or earlier is None:
            raise
        return _same_request(earlier, wanted)


def _same_request(earlier: ApiKey, wanted: tuple[str, int, list[str] | None, datetime | None]) -> IssuedKey:
    """A retried create returns the key it made (without the secret, which was shown once)."""
    if (earlier.display_name, earlier.scopes, earlier.allowed_models, earlier.expires_at) != wanted:
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used for a different API key.")
    return IssuedKey(key=earlier, secret="")


async def key_in_subtree(principal: Principal, key_id: int) -> ApiKey:
    key = await ApiKey.get_or_none(id=key_id).select_related("account")
    if key is None or not principal.owns(key.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: API key not found.")
    return key


async def revoke_api_key(principal: Principal, key_id: int, now: datetime) -> ApiKey:
    """Revoke at once; revoking a revoked key changes nothing and returns it."""
    key = await key_in_subtree(principal, key_id)
    if key.revoked_at is None:
        await ApiKey.filter(id=key.id, revoked_at__isnull=True).update(revoked_at=now)
        await key.refresh_from_db(fields=["revoked_at"])
        await outlive_leases(api_key_id=key.id, now=now)  # no edge admits for it from a lease any more
    return key


def _not_live() -> FailedPrecondition:
    return FailedPrecondition(Reason.KEY_NOT_LIVE, "name: the API key is revoked, so it cannot be changed or rotated.")


# -- list ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPage:
    keys: list[ApiKey]
    next_page_token: str


async def list_api_keys(
    principal: Principal,
    codec: PageTokenCodec,
    *,
    account: Account,
    show_revoked: bool,
    size: int,
    token: str,
) -> KeyPage:
    """Keys of ``account`` (already checked to be in the caller's subtree), newest first.

    The page token is bound to the caller's credential and to every filter, so it
    cannot be replayed by someone else or for another query.
    """
    limit = page_size(size)
    scope = f"api_keys|caller={principal.credential}|parent={account.id}|revoked={int(show_revoked)}"
    query = ApiKey.filter(account_id=account.id)
    if not show_revoked:
        query = query.filter(revoked_at__isnull=True)
    rows, next_token = await keyset_page(query, codec, scope, token, limit, key="id", descending=True)
    return KeyPage(keys=rows, next_page_token=next_token)


# -- update --------------------------------------------------------------------


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


def update_paths(paths: Sequence[str]) -> frozenset[str]:
    """The fields an update mask names; ``*`` (AIP-134) means every updatable field, empty means none."""
    if list(paths) == ["*"]:
        return frozenset(UPDATABLE_FIELDS)
    unknown = sorted({p for p in paths if p not in UPDATABLE_FIELDS})
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(UPDATABLE_FIELDS)}"
        )
    return frozenset(paths)


def _changes(paths: frozenset[str], update: KeyUpdate, now: datetime) -> dict[str, Any]:
    """Column values for the fields in ``paths``, validated like create."""
    changes: dict[str, Any] = {}
    if "display_name" in paths:
        changes["display_name"] = validation.display_name("api_key.display_name", update.display_name)
    if "scopes" in paths:
        changes["scopes"] = _scopes(update.scopes)
    if "allowed_models" in paths:
        changes["allowed_models"] = _models(update.allowed_models) or None
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
    """Change the fields named by ``paths`` (see ``update_paths``) of a live key of the caller's subtree.

    Example::

        key = await update_api_key(principal, 12, paths=["display_name"], update=KeyUpdate(display_name="ci"), now=now)
    """
    changes = _changes(update_paths(paths), update, now)
    key = await key_in_subtree(principal, key_id)
    if key.revoked_at is not None:
        raise _not_live()
    await _fit(key, changes)
    setters = _setters(principal, key, changes)
    if "scopes" in changes:
        changes |= _minted(principal, changes["scopes"])
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
        raise _not_live()
    await key.refresh_from_db()
    await outlive_leases(api_key_id=key.id, now=now)  # a narrower key holds on every edge on return
    return key


def _minted(principal: Principal, scopes: int) -> dict[str, int]:
    """``minted_by_session`` for a management secret a caller whose rights come from a session
    (see :attr:`Principal.session_origin`) is handed or enables.

    A password reset or a suspension revokes the management keys minted through the account's
    sessions: a secret rotated through a session, a key given the management scope through one,
    and any key made by such keys count as minted there, or a stolen session could keep a
    management key past the reset.
    """
    if principal.session_origin is None or not scopes & Scope.MANAGEMENT:
        return {}
    return {"minted_by_session": principal.session_origin}


# -- rotate --------------------------------------------------------------------


def grace_period(seconds: int, nanos: int) -> timedelta:
    """A protobuf Duration's fields as a grace period, or InvalidArgument on ``grace_period``."""
    same_sign = not (seconds > 0 and nanos < 0) and not (seconds < 0 and nanos > 0)
    if not -999_999_999 <= nanos <= 999_999_999 or not same_sign:
        raise InvalidArgument.field("grace_period", "is not a valid duration")
    if seconds < 0 or nanos < 0 or seconds > MAX_GRACE_PERIOD.days * 86_400:
        raise _grace_out_of_range()
    grace = timedelta(seconds=seconds, microseconds=nanos // 1000)
    _check_grace(grace)
    return grace


def _grace_out_of_range() -> InvalidArgument:
    return InvalidArgument.field("grace_period", f"must be between 0 and {MAX_GRACE_PERIOD.days} days")


def _check_grace(grace: timedelta) -> None:
    if grace < timedelta(0) or grace > MAX_GRACE_PERIOD:
        raise _grace_out_of_range()


async def rotate_api_key(principal: Principal, key_id: int, *, grace: timedelta, now: datetime) -> IssuedKey:
    """Give a live key of the caller's subtree a new secret; the old one works until ``now + grace``.

    The key keeps its id, settings and usage. After the grace period (at once
    when ``grace`` is zero) the old secret is refused as ``KEY_ROTATED``. Only one earlier secret
    is kept: rotating again while a previous rotation's grace period is running
    replaces that older secret (it stops working at once) with the one being
    rotated away now.

    The swap is one conditional UPDATE on the secret the caller saw, so of two
    concurrent rotations exactly one wins; the other fails with
    FAILED_PRECONDITION ``KEY_ROTATED`` and its secret is never issued.
    """
    _check_grace(grace)
    key = await key_in_subtree(principal, key_id)
    if key.revoked_at is not None:
        raise _not_live()
    secret = keys.new_secret()
    swapped = await ApiKey.filter(id=key.id, key_hash=key.key_hash, revoked_at__isnull=True).update(
        key_hash=keys.hash_secret(secret),
        prefix=keys.display_prefix(secret),
        previous_key_hash=key.key_hash,
        previous_expires_at=now + grace,
        rotated_at=now,
        **_minted(principal, key.scopes),
    )
    if not swapped:
        latest = await ApiKey.get_or_none(id=key.id)
        if latest is None:
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: API key not found.")
        if latest.revoked_at is not None:
            raise _not_live()
        raise FailedPrecondition(
            Reason.KEY_ROTATED, "name: the API key was rotated by another call at the same time; read it and retry."
        )
    await key.refresh_from_db()
    if grace < LONGEST_WAIT:  # a lease of the old secret may outlive its grace: let it end first
        await outlive_leases(api_key_id=key.id, now=now)
    return IssuedKey(key=key, secret=secret)
