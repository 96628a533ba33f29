"""API keys: issue, get, revoke. The secret is shown once and never stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError

from claudeopus import keys
from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import AlreadyExists, InvalidArgument, NotFound, Reason
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, ApiKey, Scope

MAX_ALLOWED_MODELS = 256


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
) -> IssuedKey:
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
    if len(values) > MAX_ALLOWED_MODELS:
        raise InvalidArgument.field("api_key.allowed_models", f"at most {MAX_ALLOWED_MODELS} models")
    return [validation.model_name(f"api_key.allowed_models[{i}]", v) for i, v in enumerate(values)]


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
    """Issue a key for ``account`` (already checked to be in the caller's subtree)."""
    del principal  # the subtree check happened when ``account`` was resolved
    name = validation.display_name("api_key.display_name", display_name)
    mask = _scopes(scopes)
    models = _models(allowed_models)
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument.field("api_key.expire_time", "must be in the future")
    rid = validation.request_id("request_id", request_id)
    wanted = (name, mask, models or None, expires_at)
    if rid is not None:
        earlier = await ApiKey.get_or_none(account_id=account.id, create_request_id=rid)
        if earlier is not None:
            return _same_request(earlier, wanted)
    try:
        return await issue_key(
            account,
            display_name=name,
            scopes=mask,
            allowed_models=models,
            expires_at=expires_at,
            request_id=rid,
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
    return key
