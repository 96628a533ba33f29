"""A change that takes rights away holds on every edge when the call that made it returns, leases or not.

An edge admits a key's requests from a lease (see :mod:`claudeopus.control.ledger.leases.grant`) until
the lease ends, without asking control. So revoking, rotating or changing a key, suspending or
deleting an account, creating a budget over keys that leased while none held them, lowering a
budget's limit and changing a price waits — after its commit — until every lease that could still
admit for it at the old terms has ended (at most the lease's ttl: ``CLAUDEOPUS_LEASE_SECONDS`` at the edge, 1 s in the
benchmark; nothing when no lease is live). No new lease can be granted on what the change
replaced: a grant re-reads the auth epoch under a share lock before it inserts its lease, so it
either commits before the change's epoch bump (and is waited for here) or sees the new epoch
(and grants nothing). Every control replica sees the same leases in the database.

Example::

    await revoke(...)                                   # committed
    await outlive_leases(api_key_id=key.id, now=now)    # no edge admits for the key any more
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from tortoise.expressions import Subquery

from claudeopus.control.models import Account, BudgetLease

# Longer than any lease lives (grant.MAX_TTL): a clock jump cannot make a call hang.
LONGEST_WAIT = timedelta(seconds=61)


async def outlive_leases(
    *,
    now: datetime,
    api_key_id: int | None = None,
    api_key_ids: list[int] | None = None,
    account: Account | None = None,
    model: str | None = None,
    unlimited: bool | None = None,
) -> float:
    """Wait until the live leases of the key (the keys, or the account's whole subtree) have ended; seconds waited.

    ``model`` narrows it to leases for that model, ``unlimited`` to leases that count
    nothing (True) or that hold budget (False).
    """
    query = BudgetLease.all()
    if api_key_id is not None:
        query = query.filter(api_key_id=api_key_id)
    if api_key_ids is not None:
        query = query.filter(api_key_id__in=api_key_ids)
    if account is not None:
        query = query.filter(account_id__in=Subquery(Account.filter(path__startswith=account.path).values("id")))
    if model is not None:
        query = query.filter(model=model)
    if unlimited is not None:
        query = query.filter(unlimited=unlimited)
    last = await query.order_by("-expires_at").first()
    if last is None or last.expires_at <= now:
        return 0.0
    wait = min(last.expires_at - now, LONGEST_WAIT).total_seconds()
    await asyncio.sleep(wait)
    return wait
