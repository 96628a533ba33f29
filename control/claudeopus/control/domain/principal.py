"""Who is calling: resolving a key into a principal and checking that a key is usable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from claudeopus import keys
from claudeopus.control.domain.errors import PermissionDenied, Reason, Unauthenticated
from claudeopus.control.models import Account, AccountState, ApiKey, Role, Scope


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated management caller; it may act only inside its subtree."""

    account_id: int
    account_path: str
    role: Role
    api_key_id: int

    def owns(self, account: Account) -> bool:
        return account.path.startswith(self.account_path)


async def usable_key(key_hash_hex: str, scope: Scope, now: datetime) -> ApiKey:
    """The live key with this hash, its account loaded, or a denial naming why."""
    key = await ApiKey.get_or_none(key_hash=key_hash_hex).select_related("account")
    if key is None:
        raise Unauthenticated(Reason.KEY_INVALID, "Incorrect API key provided.")
    if key.revoked_at is not None:
        raise Unauthenticated(Reason.KEY_REVOKED, "This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated(Reason.KEY_EXPIRED, "This API key has expired.")
    if not key.has_scope(scope):
        raise PermissionDenied(Reason.KEY_SCOPE_DENIED, f"This API key does not have the {scope.name.lower()} scope.")
    account = key.account
    if await Account.filter(id__in=account.ancestor_ids(), state=AccountState.SUSPENDED).exists():
        raise PermissionDenied(Reason.ACCOUNT_SUSPENDED, "The account of this API key is suspended.")
    return key


async def authenticate_management(secret: str | None, now: datetime) -> Principal:
    """Resolve a management key's secret (from call metadata) into a principal."""
    if not secret:
        raise Unauthenticated(
            Reason.CREDENTIAL_MISSING, "Send a management key as metadata 'authorization: Bearer sk-co-...'."
        )
    if not keys.looks_like_secret(secret):
        raise Unauthenticated(Reason.KEY_INVALID, "Incorrect API key provided.")
    key = await usable_key(keys.hash_secret(secret), Scope.MANAGEMENT, now)
    return Principal(account_id=key.account.id, account_path=key.account.path, role=key.account.role, api_key_id=key.id)
