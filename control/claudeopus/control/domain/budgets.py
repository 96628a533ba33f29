"""Budgets: set, read, list, change and remove spending limits on accounts and keys.

A budget limits one metric (input, output or total tokens, or cost in
micro-units) over one period (total, UTC day, UTC month) on an account or on
an API key. What it holds is enforced by :mod:`reservations` at authorize time;
this module is the management side.

Rules:

- An account's budgets are set from above: a caller may set budgets on accounts
  strictly below it, never on its own account (that would let it raise its own
  limit). Key budgets may be set on any key of the caller's subtree, its own
  keys included.
- A budget may not be larger than a budget with the same metric and period on
  the owner's ancestors (for a key: its account and the account's ancestors)
  that the caller can read, ``BUDGET_ABOVE_PARENT``. Those budgets cap it anyway;
  the check catches a reseller promising more than it has. Budgets above the
  caller's own account are not compared: the refusal would tell their limits.
- Only the account that set a budget, or one above it, may change or remove it
  (``BUDGET_HELD_ABOVE``): a user cannot lift a cap its reseller put on its key.
- A budget created mid-period starts with what its owner already spent in that
  period (settled usage rows), so "1,000 tokens this month" means this month.
  Requests in flight at that moment join it: their reserved amounts are held in
  it and their settle moves them like any other hold.

Example::

    budget = await create_budget(principal, owner=Owner.account(7), metric=BudgetMetric.COST_MICROS,
                                 period=BudgetPeriod.MONTHLY, limit=50_000_000, request_id="", now=now)
    view = await get_budget(principal, budget.id, now)
    print(view.spent, view.remaining)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q, Subquery
from tortoise.functions import Coalesce, Sum
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from claudeopus.control.domain import validation
from claudeopus.control.domain.accounts import account_in_subtree
from claudeopus.control.domain.api_keys import key_in_subtree
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, format_name
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.periods import period_bounds, period_index
from claudeopus.control.domain.principal import Principal
from claudeopus.control.ledger import reservations
from claudeopus.control.ledger.leases.fence import outlive_leases
from claudeopus.control.ledger.reservations import COUNTER_CAP
from claudeopus.control.models import (
    Account,
    Budget,
    BudgetCounter,
    BudgetLease,
    BudgetMetric,
    BudgetPeriod,
    UsageRecord,
    UsageStatus,
)

MAX_LIMIT = COUNTER_CAP
UPDATABLE_FIELDS = ("limit",)


@dataclass(frozen=True, slots=True)
class Owner:
    """What a budget is set on: an account, or a key (``api_key_id``) of ``account``."""

    account: Account
    api_key_id: int | None = None

    @property
    def name(self) -> str:
        if self.api_key_id is not None:
            return format_name(API_KEYS, self.api_key_id)
        return format_name(ACCOUNTS, self.account.id)


async def resolve_owner(principal: Principal, field: str, name: str) -> Owner:
    """``accounts/{id}`` or ``apiKeys/{id}`` in the caller's subtree; empty means the caller's account."""
    if not name:
        return Owner(await account_in_subtree(principal, None, field))
    collection, _, raw = name.partition("/")
    if collection not in (ACCOUNTS, API_KEYS) or not (raw.isascii() and raw.isdecimal()) or len(raw) > 18:
        raise InvalidArgument.field(field, "must be a resource name like 'accounts/123' or 'apiKeys/123'")
    if collection == ACCOUNTS:
        return Owner(await account_in_subtree(principal, int(raw), field))
    try:
        key = await key_in_subtree(principal, int(raw))
    except NotFound:
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: API key not found.") from None
    return Owner(key.account, key.id)


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
            (c.budget_id, c.period_index): c  # type: ignore[attr-defined]
            for c in await BudgetCounter.filter(budget_id__in=[b.id for b in budgets])
            if (c.budget_id, c.period_index) in wanted  # type: ignore[attr-defined]
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


# -- checks ----------------------------------------------------------------------


def _limit(field: str, value: int) -> int:
    if not 0 <= value <= MAX_LIMIT:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_LIMIT}")
    return value


def _new_budget_fields(metric: int, period: int, limit: int) -> tuple[BudgetMetric, BudgetPeriod, int]:
    """Metric, period and limit of a new budget; every bad one is reported at once."""
    violations = []
    if metric not in BudgetMetric.__members__.values():
        violations.append(
            FieldViolation("budget.metric", "must be INPUT_TOKENS, OUTPUT_TOKENS, TOTAL_TOKENS or COST_MICROS")
        )
    if period not in BudgetPeriod.__members__.values():
        violations.append(FieldViolation("budget.period", "must be TOTAL, DAILY or MONTHLY"))
    if not 0 <= limit <= MAX_LIMIT:
        violations.append(FieldViolation("budget.limit", f"must be between 0 and {MAX_LIMIT}"))
    if violations:
        raise InvalidArgument(violations)
    return BudgetMetric(metric), BudgetPeriod(period), limit


def _may_write(principal: Principal, owner: Owner) -> None:
    if owner.api_key_id is None and owner.account.id == principal.account_id:
        raise PermissionDenied(
            Reason.SELF_CHANGE_DENIED, "Budgets on your own account are set by the account above you."
        )


async def _may_change(principal: Principal, budget: Budget) -> None:
    setter = await Account.get_or_none(id=budget.set_by)
    if setter is None or not setter.path.startswith(principal.account_path):
        raise PermissionDenied(
            Reason.BUDGET_HELD_ABOVE, "This budget was set above you; only that account can change or remove it."
        )


async def _check_not_above_parent(
    principal: Principal, owner: Owner, metric: BudgetMetric, period: BudgetPeriod, limit: int
) -> None:
    """Refuse a limit above a budget of the same metric and period higher up that the caller can read.

    Budgets on accounts above the caller's own are left out: comparing against them would let the
    caller learn their limits (from the message, or by trying one limit after another). They cap
    the owner's spending at authorize time all the same.
    """
    chain = owner.account.ancestor_ids()
    above = chain if owner.api_key_id is not None else chain[:-1]
    caps = await Budget.filter(
        account_id__in=above,
        account__path__startswith=principal.account_path,
        api_key_id__isnull=True,
        metric=metric,
        period=period,
        limit_amount__lt=limit,
    ).select_related("account")
    if caps:
        tightest = min(caps, key=lambda b: b.limit_amount)
        raise FailedPrecondition(
            Reason.BUDGET_ABOVE_PARENT,
            f"budget.limit {limit} is above {tightest.limit_amount}, the limit of the "
            f"{period.name.lower()} {metric.name.lower()} budget on {format_name(ACCOUNTS, tightest.account.id)}.",
        )


async def budget_in_subtree(principal: Principal, budget_id: int, field: str = "name") -> Budget:
    budget = await Budget.get_or_none(id=budget_id).select_related("account")
    if budget is None or not principal.owns(budget.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: budget not found.")
    return budget


# -- create ----------------------------------------------------------------------


def _owner_rows(query: QuerySet[UsageRecord], owner: Owner) -> QuerySet[UsageRecord]:
    if owner.api_key_id is not None:
        return query.filter(api_key_id=owner.api_key_id)
    # A subquery, not a join: with a join Tortoise groups the sums by every usage column.
    subtree = Account.filter(path__startswith=owner.account.path).values("id")
    return query.filter(account_id__in=Subquery(subtree))


async def _join_open_reservations(
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


async def _join_live_leases(conn: BaseDBAsyncClient, owner: Owner, budget: Budget, now: datetime) -> int:
    """Add the new budget's hold to the owner's live leases (see ledger/leases); what they hold in it.

    A lease lives within one period, so every live lease is in the current one. Requests its
    edge admits later open their rows with the lease's holds, the new one included. A lease
    granted while no budget held the key holds nothing: its requests are charged to the new
    budget when they settle, and :func:`create_budget` returns once such leases have ended,
    so from then on every edge authorizes the owner's requests against the budget.
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


async def _spent_so_far(
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
    wanted_metric, wanted_period, limit = _new_budget_fields(metric, period, limit)
    rid = validation.request_id("request_id", request_id)
    _may_write(principal, owner)
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
    await _check_not_above_parent(principal, owner, wanted_metric, wanted_period, limit)
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
            reserved = await _join_live_leases(conn, owner, budget, now)
            reserved += await _join_open_reservations(conn, owner, budget, index, now)
            spent = await _spent_so_far(conn, owner, wanted_metric, wanted_period, now)
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


def update_paths(paths: Sequence[str]) -> tuple[str, ...]:
    if list(paths) == ["*"]:
        return UPDATABLE_FIELDS
    unknown = sorted({p for p in paths if p not in UPDATABLE_FIELDS})
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(UPDATABLE_FIELDS)}"
        )
    return tuple(f for f in UPDATABLE_FIELDS if f in paths)


def _owner_of(budget: Budget) -> Owner:
    return Owner(budget.account, budget.api_key_id)  # type: ignore[attr-defined]


async def update_budget(
    principal: Principal, budget_id: int, *, paths: Sequence[str], limit: int, now: datetime
) -> BudgetView:
    """Change a budget's limit. Lowering it below what is spent refuses every further request.

    A lowered limit holds on every edge when this returns: it waits for the owner's leases,
    sized after the old limit, to end.
    """
    fields = update_paths(paths)
    budget = await budget_in_subtree(principal, budget_id, "budget.name")
    owner = _owner_of(budget)
    _may_write(principal, owner)
    await _may_change(principal, budget)
    if "limit" in fields:
        limit = _limit("budget.limit", limit)
        await _check_not_above_parent(principal, owner, budget.metric, budget.period, limit)
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
    _may_write(principal, _owner_of(budget))
    await _may_change(principal, budget)
    if not await Budget.filter(id=budget.id).delete():
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: budget not found.")
