"""What a budget created mid-period starts with: the owner's spending so far and what it holds.

A budget created mid-period starts with what its owner already spent in that period
(settled usage rows), so "1,000 tokens this month" means this month. Requests in flight
at that moment, and the owner's live leases, join it: their reserved amounts are held in
it and their settle moves them like any other hold. Each function works inside the
transaction that creates the budget.

Example::

    reserved = await join_live_leases(conn, owner, budget, now)
    reserved += await join_open_reservations(conn, owner, budget, index, now)
    spent = await spent_so_far(conn, owner, budget.metric, budget.period, now)
"""

from __future__ import annotations

from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q, Subquery
from tortoise.functions import Coalesce, Sum
from tortoise.queryset import QuerySet

from claudeopus.control.domain import reservations
from claudeopus.control.domain.budget_owners import Owner
from claudeopus.control.domain.periods import period_bounds, period_index
from claudeopus.control.models import Account, Budget, BudgetLease, BudgetMetric, BudgetPeriod, UsageRecord, UsageStatus


def _owner_rows(query: QuerySet[UsageRecord], owner: Owner) -> QuerySet[UsageRecord]:
    if owner.api_key_id is not None:
        return query.filter(api_key_id=owner.api_key_id)
    # A subquery, not a join: with a join Tortoise groups the sums by every usage column.
    subtree = Account.filter(path__startswith=owner.account.path).values("id")
    return query.filter(account_id__in=Subquery(subtree))


async def join_open_reservations(
    conn: BaseDBAsyncClient, owner: Owner, budget: Budget, index: int, now: datetime
) -> int:
    """Add the new budget's hold to the owner's reservations open in this period; their total amount.

    Their settle (or expiry) then moves it like any other hold, so a request in
    flight when the budget is created is counted in it too.
    """
    start, _ = period_bounds(budget.period, index)
    query = _owner_rows(UsageRecord.filter(status=UsageStatus.RESERVED), owner).using_db(conn)
    if start is not None:
        query = query.filter(created_at__gte=start)
    total = 0
    depth = len(owner.account.ancestor_ids()) - 1
    for row in await query.select_for_update():
        holds = [*reservations.decode_holds(row.reserved_counters), reservations.hold_for(budget, depth, now)]
        await UsageRecord.filter(id=row.id).using_db(conn).update(reserved_counters=reservations.encode_holds(holds))
        amounts = reservations.Amounts(row.estimated_input_tokens, row.max_output_tokens, row.reserved_cost_micros)
        total += amounts.of(budget.metric)
    return total


async def join_live_leases(conn: BaseDBAsyncClient, owner: Owner, budget: Budget, now: datetime) -> int:
    """Add the new budget's hold to the owner's live leases (see leases.py); what they hold in it.

    A lease lives within one period, so every live lease is in the current one. Requests its
    edge admits later open their rows with the lease's holds, the new one included. A lease
    granted while no budget held the key holds nothing: its requests are charged to the new
    budget when they settle, and :func:`~claudeopus.control.domain.budgets.create_budget`
    returns once such leases have ended, so from then on every edge authorizes the owner's
    requests against the budget.
    """
    query = BudgetLease.all().using_db(conn)
    if owner.api_key_id is not None:
        query = query.filter(api_key_id=owner.api_key_id)
    else:
        query = query.filter(account_id__in=Subquery(Account.filter(path__startswith=owner.account.path).values("id")))
    hold = reservations.hold_for(budget, len(owner.account.ancestor_ids()) - 1, now)
    total = 0
    for lease in await query.order_by("lease_id").select_for_update():
        holds = [*reservations.decode_holds(lease.reserved_counters), hold]
        await BudgetLease.filter(id=lease.id).using_db(conn).update(reserved_counters=reservations.encode_holds(holds))
        held = reservations.Amounts(lease.open_input_tokens, lease.open_output_tokens, lease.open_cost_micros)
        total += held.of(budget.metric)
    return total


async def spent_so_far(
    conn: BaseDBAsyncClient, owner: Owner, metric: BudgetMetric, period: BudgetPeriod, now: datetime
) -> int:
    """What the owner's settled usage rows already count in the current period."""
    query = _owner_rows(UsageRecord.filter(~Q(status=UsageStatus.RESERVED)), owner).using_db(conn)
    start, _ = period_bounds(period, period_index(period, now))
    if start is not None:
        query = query.filter(created_at__gte=start)
    row = (
        await query.annotate(
            i=Coalesce(Sum("input_tokens"), 0), o=Coalesce(Sum("output_tokens"), 0), c=Coalesce(Sum("cost_micros"), 0)
        )
        .first()
        .values("i", "o", "c")
    )
    sums = row or {"i": 0, "o": 0, "c": 0}
    i, o, c = int(sums["i"] or 0), int(sums["o"] or 0), int(sums["c"] or 0)
    return {BudgetMetric.INPUT_TOKENS: i, BudgetMetric.OUTPUT_TOKENS: o, BudgetMetric.TOTAL_TOKENS: i + o}.get(
        metric, c
    )
