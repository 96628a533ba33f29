"""API keys: issue, get, list and revoke. A secret is shown once and never stored.

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
Changing a key's fields and limits is in :mod:`~claudeopus.control.domain.api_key_updates`,
giving it a new secret in :mod:`~claudeopus.control.domain.api_key_rotation`.

Example::

    issued = await create_api_key(principal, account=account, display_name="ci", scopes=[Scope.INFERENCE],
                                  allowed_models=[], expires_at=None, request_id="", now=now)
    print(issued.secret)   # shown this once
    await revoke_api_key(principal, issued.key.id, now)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from claudeopus import keys
from claudeopus.control.domain import policies, validation
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
)
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, ApiKey, Scope


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


def scopes_mask(values: Sequence[int]) -> int:
    mask = 0
    for index, value in enumerate(values):
        try:
            mask |= Scope(value)
        except ValueError:
            raise InvalidArgument.field(
                f"api_key.scopes[{index}]", "must be SCOPE_INFERENCE or SCOPE_MANAGEMENT"
            ) from None
    return mask or Scope.INFERENCE


def valid_models(values: Sequence[str]) -> list[str]:
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
    mask = scopes_mask(scopes)
    models = valid_models(allowed_models)
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


def not_live() -> FailedPrecondition:
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


def minted(principal: Principal, scopes: int) -> dict[str, int]:
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
