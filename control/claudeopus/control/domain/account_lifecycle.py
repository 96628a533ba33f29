"""Ending and pausing accounts: delete, suspend, resume.

Each acts only on an account strictly below the caller. A deleted account keeps its
row for its usage history; a suspension stops every key and session of the subtree at
once and holds until the account that imposed it (or one above) lifts it.

Example::

    await suspend_account(principal, 42, now)
    await resume_account(principal, 42, now)
    await delete_account(principal, 42, now)   # once it has no live sub-accounts or keys
"""

from __future__ import annotations

from datetime import datetime

from tortoise.expressions import Q, Subquery
from tortoise.transactions import in_transaction

from claudeopus.control.domain import sessions
from claudeopus.control.domain.accounts import MAX_EMAIL, account_in_subtree, has_children, locked_account
from claudeopus.control.domain.errors import FailedPrecondition, NotFound, PermissionDenied, Reason
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, AccountState, ApiKey, Session


async def _strictly_below(principal: Principal, account_id: int, action: str) -> Account:
    target = await account_in_subtree(principal, account_id, "name")
    if target.id == principal.account_id:
        raise PermissionDenied(Reason.SELF_CHANGE_DENIED, f"name: an account cannot {action} itself.")
    return target


def tombstone_email(account: Account) -> str:
    """The deleted account's email, freeing the address for reuse.

    The space makes it an invalid address, so no live account can hold it (and
    block a delete); the id makes it unique.
    """
    return f"deleted-{account.id} {account.email}"[:MAX_EMAIL]


async def delete_account(principal: Principal, account_id: int, now: datetime) -> None:
    """Soft-delete an account below the caller that has no live sub-accounts and no live keys.

    The row stays for its usage history; its email becomes a tombstone, its
    password hash and sessions are removed, and every call treats it as absent.
    """
    target = await _strictly_below(principal, account_id, "delete")
    async with in_transaction():
        locked = await locked_account(target.id, "name")
        if await has_children(locked.id):
            raise FailedPrecondition(Reason.ACCOUNT_NOT_EMPTY, "name: the account has sub-accounts; delete them first.")
        live_keys = ApiKey.filter(account_id=locked.id, revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
        if await live_keys.exists():
            raise FailedPrecondition(
                Reason.ACCOUNT_NOT_EMPTY, "name: the account has live API keys; revoke them first."
            )
        await Account.filter(id=locked.id).update(
            deleted_at=now,
            updated_at=now,
            email=tombstone_email(locked),
            password_hash=None,
            create_request_id=None,
        )
        await Session.filter(account_id=locked.id).delete()


async def _set_state(principal: Principal, account_id: int, state: AccountState, action: str, now: datetime) -> Account:
    target = await _strictly_below(principal, account_id, action)
    suspender = principal.account_id if state is AccountState.SUSPENDED else None
    if state is AccountState.SUSPENDED and target.state is AccountState.SUSPENDED:
        if not await _is_at_or_above(principal, target.suspended_by):
            return target  # already suspended from above: keep the stronger hold
    elif state is AccountState.ACTIVE and target.state is AccountState.SUSPENDED:
        if not await _is_at_or_above(principal, target.suspended_by):
            raise FailedPrecondition(
                Reason.SUSPENSION_HELD_ABOVE, "name: this account was suspended above you; only they can resume it."
            )
    elif target.state == state:
        return target
    async with in_transaction():
        updated = await Account.filter(id=target.id, deleted_at__isnull=True).update(
            state=state, suspended_by=suspender, updated_at=now
        )
        if not updated:
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: account not found.")
        if state is AccountState.SUSPENDED:
            # A resume must not bring back what may have been stolen: every session of the
            # subtree ends, and so do the management keys minted through them.
            # The keys it revokes belong to the subtree, whose leases suspend_account outlives.
            subtree = Account.filter(path__startswith=target.path).values("id")
            await sessions.end_sessions(Session.filter(account_id__in=Subquery(subtree)), now)
    target.state, target.suspended_by = state, suspender
    return target


async def _is_at_or_above(principal: Principal, account_id: int | None) -> bool:
    """Whether the caller is ``account_id`` or one of its ancestors (true when nobody is recorded)."""
    if account_id is None or account_id == principal.account_id:
        return True
    holder = await Account.get_or_none(id=account_id)
    return holder is None or holder.path.startswith(principal.account_path)


async def suspend_account(principal: Principal, account_id: int, now: datetime) -> Account:
    """Suspend an account below the caller; every key and session of its subtree stops at once.

    "At once" includes edges admitting from leases: the call returns when the subtree's leases ended.
    """
    target = await _set_state(principal, account_id, AccountState.SUSPENDED, "suspend", now)
    await outlive_leases(account=target, now=now)
    return target


async def resume_account(principal: Principal, account_id: int, now: datetime) -> Account:
    """Lift a suspension imposed by the caller or below it (a suspended ancestor still blocks the subtree)."""
    return await _set_state(principal, account_id, AccountState.ACTIVE, "resume", now)
