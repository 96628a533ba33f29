"""Who is calling: resolving a key or a session into a principal, and checking that a key is usable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tortoise.expressions import Q

from claudeopus import keys
from claudeopus.control.domain import policies, sessions
from claudeopus.control.domain.errors import PermissionDenied, Reason, Unauthenticated
from claudeopus.control.models import Account, AccountState, ApiKey, Role, Scope, ids_on_path


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated management caller; it may act only inside its subtree.

    ``credential`` names what authenticated it (``key:12`` or ``session:7``); page
    tokens are bound to it.
    """

    account_id: int
    account_path: str
    role: Role
    credential: str
    # For a management key minted through a session (or through a key that was): that session.
    minted_by_session: int | None = None

    @property
    def session_id(self) -> int | None:
        """The id of the session the caller authenticated with; None for a key."""
        kind, _, ident = self.credential.partition(":")
        return int(ident) if kind == "session" else None

    @property
    def session_origin(self) -> int | None:
        """The session this caller's rights come from: its own, or the one its key was minted through.

        Keys minted, rotated or given the management scope by such a caller carry it, so ending
        the session (a password reset, a suspension) revokes every management key that descends
        from it, however many keys deep.
        """
        session = self.session_id
        return session if session is not None else self.minted_by_session

    @property
    def tenant_id(self) -> int:
        """The account just below the root on the caller's chain (the root for the admin itself):
        allowances that sub-accounts must not multiply are counted per tenant."""
        ids = ids_on_path(self.account_path)
        return ids[1] if len(ids) > 1 else ids[0]

    def owns(self, account: Account) -> bool:
        return account.deleted_at is None and account.path.startswith(self.account_path)

    def is_under(self, account_id: int) -> bool:
        """Whether the caller's account is strictly below ``account_id``: an account it must not learn of."""
        return account_id != self.account_id and f"/{account_id}/" in self.account_path


async def ensure_not_suspended(account: Account) -> None:
    """Refuse when the account or any ancestor is suspended."""
    if await any_suspended(account):
        raise suspended()


def suspended() -> PermissionDenied:
    """The refusal of a credential whose account, or an ancestor of it, is suspended."""
    return PermissionDenied(Reason.ACCOUNT_SUSPENDED, "The account of this credential is suspended.")


async def any_suspended(account: Account) -> bool:
    """Whether the account or any ancestor is suspended."""
    return await Account.filter(id__in=account.ancestor_ids(), state=AccountState.SUSPENDED).exists()


async def find_key(key_hash_hex: str) -> ApiKey | None:
    """The key whose current or replaced secret has this hash, with its account; None if there is none."""
    return (
        await ApiKey.filter(Q(key_hash=key_hash_hex) | Q(previous_key_hash=key_hash_hex))
        .select_related("account")
        .first()
    )


def check_key(key: ApiKey | None, key_hash_hex: str, scope: Scope, now: datetime) -> ApiKey:
    """``key`` if it is live for ``scope`` at ``now`` when presented with this hash (suspension aside)."""
    if key is None or key.account.deleted_at is not None:
        raise Unauthenticated(Reason.KEY_INVALID, "Incorrect API key provided.")
    if key.revoked_at is not None:
        raise Unauthenticated(Reason.KEY_REVOKED, "This API key has been revoked.")
    if key.key_hash != key_hash_hex and (
        key.previous_expires_at is None or key.previous_expires_at <= now or scope is Scope.MANAGEMENT
    ):
        # A replaced secret only keeps serving inference during its grace period: it can never
        # manage anything, so rotating a leaked management key really takes it away.
        raise Unauthenticated(Reason.KEY_ROTATED, "This API key secret was replaced by a rotation.")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated(Reason.KEY_EXPIRED, "This API key has expired.")
    if not key.has_scope(scope):
        raise PermissionDenied(Reason.KEY_SCOPE_DENIED, f"This API key does not have the {scope.name.lower()} scope.")
    return key


async def usable_key(key_hash_hex: str, scope: Scope, now: datetime) -> ApiKey:
    """The live key with this hash (current secret, or a rotated one in its grace period), or a denial."""
    key = check_key(await find_key(key_hash_hex), key_hash_hex, scope, now)
    await ensure_not_suspended(key.account)
    return key


async def authenticate_management(secret: str | None, now: datetime) -> Principal:
    """Resolve a management key or a session token (from call metadata) into a principal."""
    if not secret:
        raise Unauthenticated(
            Reason.CREDENTIAL_MISSING,
            "Send a management key or session token as metadata 'authorization: Bearer ...'.",
        )
    if sessions.looks_like_token(secret):
        session = await sessions.live_session(secret, now)
        await ensure_not_suspended(session.account)
        return _principal(session.account, f"session:{session.id}")
    if not keys.looks_like_secret(secret):
        raise Unauthenticated(Reason.KEY_INVALID, "Incorrect API key provided.")
    key = await usable_key(keys.hash_secret(secret), Scope.MANAGEMENT, now)
    policy = await policies.policy_in_force(key.account)
    if not policy.management_keys:
        # A policy above forbids management keys: one minted before it no longer manages anything.
        raise PermissionDenied(Reason.ACCOUNT_POLICY_DENIED, "The account's policy does not allow management keys.")
    if policy.outlived(key, now):
        raise Unauthenticated(Reason.KEY_EXPIRED, "This API key has expired.")
    return _principal(key.account, f"key:{key.id}", key.minted_by_session)


def _principal(account: Account, credential: str, minted_by_session: int | None = None) -> Principal:
    return Principal(
        account_id=account.id,
        account_path=account.path,
        role=account.role,
        credential=credential,
        minted_by_session=minted_by_session,
    )
