"""Budgets: set, read, list, change and remove spending limits on accounts and keys.

A budget limits one metric (input, output or total tokens, or cost in
micro-units) over one period (total, UTC day, UTC month) on an account or on
an API key. What it holds is enforced by :mod:`reservations` at authorize time;
this module is the management side. Who a budget is on is a
:class:`~claudeopus.control.domain.budget_owners.Owner`; the rules a change must
pass are in :mod:`~claudeopus.control.domain.budget_checks`, and what a new budget
starts with (spending so far, requests in flight, live leases) in
:mod:`~claudeopus.control.domain.budget_start`.

Example::

    owner = await resolve_owner(principal, "budget.owner", "accounts/7")
    created = await create_budget(principal, owner=owner, metric=BudgetMetric.COST_MICROS,
                                  period=BudgetPeriod.MONTHLY, limit=50_000_000, request_id="", now=now)
    view = await get_budget(principal, created.budget.id, now)
    print(view.spent, view.remaining)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import budget_checks, budget_start, validation
from claudeopus.control.domain.budget_owners import Owner
from claudeopus.control.domain.errors import AlreadyExists, NotFound, Reason
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.periods import period_bounds, period_index
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Budget, BudgetCounter, BudgetMetric, BudgetPeriod

UPDATABLE_FIELDS = ("limit",)


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget with its current period's counter."""

    budget: Budget
    spent: int
    reserved: int
    period_start: datetime | None
    period_end: datetime | None

    @property
    def remaining(self) -> int:
        return max(0, int(self.budget.limit_amount) - self.spent - self.reserved)


async def _views(budgets: Sequence[Budget], now: datetime) -> list[BudgetView]:
    wanted = {(b.id, period_index(b.period, now)) for b in budgets}
    counters = (
        {
            (c.budget_id, c.period_index): c
            for c in await BudgetCounter.filter(budget_id__in=[b.id for b in budgets])
            if (c.budget_id, c.period_index) in wanted
        }
        if budgets
        else {}
    )
    views = []
    for budget in budgets:
        index = period_index(budget.period, now)
        counter = counters.get((budget.id, index))
        start, end = period_bounds(budget.period, index)
        views.append(
            BudgetView(
                budget=budget,
                spent=counter.spent if counter else 0,
                reserved=counter.reserved if counter else 0,
                period_start=start,
                period_end=end,
            )
        )
    return views


async def budget_in_subtree(principal: Principal, budget_id: int, field: str = "name") -> Budget:
    budget = await Budget.get_or_none(id=budget_id).select_related("account")
    if budget is None or not principal.owns(budget.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: budget not found.")
    return budget


# -- create ----------------------------------------------------------------------


async def create_budget(
    principal: Principal,
    *,
    owner: Owner,
    metric: int,
    period: int,
    limit: int,
    request_id: str,
    now: datetime,
) -> BudgetView:
    """Set a budget on ``owner``; its counter for the current period starts at what was already spent.

    It holds on every edge when this returns: the owner's leases, sized before it existed, have
    ended by then (their requests were counted in it meanwhile).
    """
    wanted_metric, wanted_period, limit = budget_checks.new_budget_fields(metric, period, limit)
    rid = validation.request_id("request_id", request_id)
    budget_checks.may_write(principal, owner)
    budget = await _create_budget(principal, owner, wanted_metric, wanted_period, limit, rid, now)
    await _outlive_leases_of(owner, now)
    return (await _views([budget], now))[0]


async def _create_budget(
    principal: Principal,
    owner: Owner,
    wanted_metric: BudgetMetric,
    wanted_period: BudgetPeriod,
    limit: int,
    rid: str | None,
    now: datetime,
) -> Budget:
    if rid is not None:
        earlier = await Budget.get_or_none(owner=owner.name, create_request_id=rid)
        if earlier is not None:
            return _same_request(earlier, wanted_metric, wanted_period, limit)
    await budget_checks.check_not_above_parent(principal, owner, wanted_metric, wanted_period, limit)
    index = period_index(wanted_period, now)
    try:
        async with in_transaction() as conn:
            budget = await Budget.create(
                account_id=owner.account.id,
                api_key_id=owner.api_key_id,
                owner=owner.name,
                metric=wanted_metric,
                period=wanted_period,
                limit_amount=limit,
                set_by=principal.account_id,
                create_request_id=rid,
                created_at=now,
                updated_at=now,
                using_db=conn,
            )
            # Live leases join the new budget first, then requests in flight (leases, then rows
            # locked, the order settling, recovering and sweeping a lease use: a row a lease
            # opens meanwhile either exists before the rows are read or carries the new hold),
            # then the settled ones are summed: each is counted once.
            reserved = await budget_start.join_live_leases(conn, owner, budget, now)
            reserved += await budget_start.join_open_reservations(conn, owner, budget, index, now)
            spent = await budget_start.spent_so_far(conn, owner, wanted_metric, wanted_period, now)
            await BudgetCounter.create(
                budget_id=budget.id,
                period_index=index,
                metric=wanted_metric,
                spent=spent,
                reserved=reserved,
                using_db=conn,
            )
    except IntegrityError:
        if rid is not None:
            earlier = await Budget.get_or_none(owner=owner.name, create_request_id=rid)
            if earlier is not None:
                return _same_request(earlier, wanted_metric, wanted_period, limit)
        raise AlreadyExists(
            Reason.RESOURCE_EXISTS,
            f"budget: {owner.name} already has a {wanted_period.name.lower()} {wanted_metric.name.lower()} "
            "budget; update it.",
        ) from None
    return budget


async def _outlive_leases_of(owner: Owner, now: datetime, *, unlimited: bool | None = None) -> None:
    """Return once the owner's live leases (those counting nothing, or holding budget) have ended."""
    if owner.api_key_id is not None:
        await outlive_leases(api_key_id=owner.api_key_id, unlimited=unlimited, now=now)
    else:
        await outlive_leases(account=owner.account, unlimited=unlimited, now=now)


def _same_request(earlier: Budget, metric: BudgetMetric, period: BudgetPeriod, limit: int) -> Budget:
    # Once the limit was updated, a retry of the create gets the budget as it is now.
    never_updated = earlier.updated_at == earlier.created_at
    if (earlier.metric, earlier.period) != (metric, period) or (never_updated and earlier.limit_amount != limit):
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used for a different budget.")
    return earlier


# -- read ------------------------------------------------------------------------


async def get_budget(principal: Principal, budget_id: int, now: datetime) -> BudgetView:
    return (await _views([await budget_in_subtree(principal, budget_id)], now))[0]


@dataclass(frozen=True, slots=True)
class BudgetPage:
    budgets: list[BudgetView]
    next_page_token: str


async def list_budgets(
    principal: Principal, codec: PageTokenCodec, *, owner: Owner, size: int, token: str, now: datetime
) -> BudgetPage:
    """Budgets set on ``owner`` (already checked to be in the caller's subtree), oldest first."""
    scope = f"budgets|caller={principal.credential}|owner={owner.name}"
    rows, next_token = await keyset_page(
        Budget.filter(owner=owner.name), codec, scope, token, page_size(size), key="id"
    )
    return BudgetPage(budgets=await _views(rows, now), next_page_token=next_token)


# -- update and delete -----------------------------------------------------------


def _owner_of(budget: Budget) -> Owner:
    return Owner(budget.account, budget.api_key_id)  # type: ignore[attr-defined]


async def update_budget(
    principal: Principal, budget_id: int, *, paths: Sequence[str], limit: int, now: datetime
) -> BudgetView:
    """Change a budget's limit. Lowering it below what is spent refuses every further request.

    A lowered limit holds on every edge when this returns: it waits for the owner's leases,
    sized after the old limit, to end.
    """
    fields = validation.update_paths(paths, UPDATABLE_FIELDS)
    budget = await budget_in_subtree(principal, budget_id, "budget.name")
    owner = _owner_of(budget)
    budget_checks.may_write(principal, owner)
    await budget_checks.may_change(principal, budget)
    if "limit" in fields:
        limit = budget_checks.limit_in_range("budget.limit", limit)
        await budget_checks.check_not_above_parent(principal, owner, budget.metric, budget.period, limit)
        lowered = limit < budget.limit_amount
        if not await Budget.filter(id=budget.id).update(limit_amount=limit, updated_at=now):
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "budget.name: budget not found.")
        await budget.refresh_from_db()
        if lowered:
            await _outlive_leases_of(owner, now, unlimited=False)
    return (await _views([budget], now))[0]


async def delete_budget(principal: Principal, budget_id: int) -> None:
    """Remove a budget and its counters; requests holding amounts in it settle without touching it."""
    budget = await budget_in_subtree(principal, budget_id)
    budget_checks.may_write(principal, _owner_of(budget))
    await budget_checks.may_change(principal, budget)
    if not await Budget.filter(id=budget.id).delete():
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: budget not found.")
