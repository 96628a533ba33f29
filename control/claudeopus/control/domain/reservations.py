"""Budget reservations: hold a request's worst case in every budget it touches, then settle it.

Authorizing reserves the worst-case amounts (input bound, output cap, their
cost) in the current period's counter of every budget on the key, its account
and each ancestor account, inside the caller's transaction. Each hold is one
conditional statement::

    UPDATE budget_counter SET reserved = reserved + :x
     WHERE budget_id = :b AND period_index = :p AND reserved <= :limit - :x - spent

so two requests can never both take the last of a budget, on any number of
control replicas. Counters are always locked in one global order (see
:func:`plan`; a request's holds are stored in that order, for settle and expiry
too), so concurrent transactions cannot deadlock.

Settling moves each hold from ``reserved`` to ``spent`` at the real amounts.
Spending can pass a limit in one way only: the upstream reports more tokens
than were reserved (it ignored max_tokens, or the prompt tokenized to more than
the request's size in bytes, e.g. image inputs). It passes it by at most that
excess, of the requests in flight at that moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q

from claudeopus.control.domain.errors import Reason, ResourceExhausted
from claudeopus.control.domain.names import BUDGETS, format_name
from claudeopus.control.domain.periods import period_index
from claudeopus.control.models import ApiKey, Budget, BudgetMetric, BudgetPeriod
from claudeopus.control.store.sql import Binder

_METRIC_WORDS = {
    BudgetMetric.INPUT_TOKENS: "input-token",
    BudgetMetric.OUTPUT_TOKENS: "output-token",
    BudgetMetric.TOTAL_TOKENS: "token",
    BudgetMetric.COST_MICROS: "cost",
}
# Every amount moved in one statement is within ±AMOUNT_CAP and ``spent`` saturates at
# COUNTER_CAP, so no counter arithmetic can leave BIGINT, however absurd a usage report;
# budget limits are at most COUNTER_CAP.
AMOUNT_CAP = 2**61
COUNTER_CAP = 2**62
_PERIOD_WORDS = {BudgetPeriod.TOTAL: "total", BudgetPeriod.DAILY: "daily", BudgetPeriod.MONTHLY: "monthly"}


@dataclass(frozen=True, slots=True)
class Amounts:
    """Tokens and cost of one request (reserved or real)."""

    input_tokens: int
    output_tokens: int
    cost_micros: int

    def of(self, metric: BudgetMetric) -> int:
        """The amount counted by ``metric``, saturated to ±AMOUNT_CAP (absurd reports cannot overflow)."""
        if metric is BudgetMetric.INPUT_TOKENS:
            value = self.input_tokens
        elif metric is BudgetMetric.OUTPUT_TOKENS:
            value = self.output_tokens
        elif metric is BudgetMetric.TOTAL_TOKENS:
            value = self.input_tokens + self.output_tokens
        else:
            value = self.cost_micros
        return max(-AMOUNT_CAP, min(AMOUNT_CAP, value))


@dataclass(frozen=True, slots=True)
class Hold:
    """One budget counter a request holds an amount in, with the budget's place in the lock order.

    ``depth`` is the budget owner's account depth (root 0) and ``on_key`` whether it is set on
    a key: together with the id they give :func:`lock_order`, the same in every transaction.
    """

    budget_id: int
    period_index: int
    metric: BudgetMetric
    depth: int
    on_key: bool


def lock_order(hold: Hold) -> tuple[int, int, int, int]:
    """Deepest owner first, a key's budgets before its account's, then budget id and period."""
    return (-hold.depth, 0 if hold.on_key else 1, hold.budget_id, hold.period_index)


def hold_for(budget: Budget, depth: int, moment: datetime) -> Hold:
    return Hold(
        budget.id,
        period_index(budget.period, moment),
        budget.metric,
        depth,
        budget.api_key_id is not None,  # type: ignore[attr-defined]
    )


def encode_holds(holds: Sequence[Hold]) -> str:
    return ",".join(
        f"{h.budget_id}:{h.period_index}:{int(h.metric)}:{h.depth}:{int(h.on_key)}"
        for h in sorted(holds, key=lock_order)
    )


def decode_holds(text: str) -> list[Hold]:
    holds = []
    for part in filter(None, text.split(",")):
        budget_id, index, metric, depth, on_key = part.split(":")
        holds.append(Hold(int(budget_id), int(index), BudgetMetric(int(metric)), int(depth), on_key == "1"))
    return holds


async def applicable_budgets(key: ApiKey) -> list[Budget]:
    """Budgets on ``key``, its account and every ancestor. One query."""
    chain = key.account.ancestor_ids()
    return (
        await Budget.filter(Q(api_key_id__isnull=True) | Q(api_key_id=key.id), account_id__in=chain)
        .order_by("id")
        .all()
    )


async def _try_hold(conn: BaseDBAsyncClient, budget: Budget, index: int, amount: int) -> bool:
    bind = Binder(conn.capabilities.dialect)
    sql = (
        f"UPDATE budget_counter SET reserved = reserved + {bind(amount)} "  # noqa: S608 - fixed text, bound values
        f"WHERE budget_id = {bind(budget.id)} AND period_index = {bind(index)} "
        f"AND reserved <= {bind(budget.limit_amount - amount)} - spent"
    )
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0


async def _ensure_counter(conn: BaseDBAsyncClient, budget: Budget, index: int) -> None:
    bind = Binder(conn.capabilities.dialect)
    sql = (
        "INSERT INTO budget_counter (budget_id, period_index, metric, spent, reserved) "  # noqa: S608
        f"VALUES ({bind(budget.id)}, {bind(index)}, {bind(int(budget.metric))}, 0, 0) "
        "ON CONFLICT (budget_id, period_index) DO NOTHING"
    )
    await conn.execute_query(sql, bind.values)


def _exhausted(budget: Budget, key: ApiKey) -> ResourceExhausted:
    """The refusal the key's holder reads (the edge relays the message).

    A budget of the key or of its own account is named with its metric and period (the holder's
    account can read it); one set on an account above says only that a budget above is exhausted.
    """
    above = budget.api_key_id is None and budget.account_id != key.account.id  # type: ignore[attr-defined]
    scope = "key" if budget.api_key_id is not None else "reseller" if above else "account"  # type: ignore[attr-defined]
    metadata = {
        "budget_scope": scope,
        "metric": budget.metric.name,
        "period": budget.period.name,
    }
    if above:  # an ancestor's budget is not the sub-user's business: neither its name nor its kind
        message = "You exceeded a budget set by your reseller (reseller budget): this request was not sent upstream."
    else:
        metadata["budget"] = format_name(BUDGETS, budget.id)
        whose = "this API key's" if scope == "key" else "your account's"
        words = f"{_PERIOD_WORDS[budget.period]} {_METRIC_WORDS[budget.metric]} budget"
        message = f"You exceeded {whose} {words} ({scope} budget): this request was not sent upstream."
    return ResourceExhausted(Reason.BUDGET_EXHAUSTED, message, metadata, budget_id=budget.id)


def plan(key: ApiKey, budgets: Sequence[Budget], now: datetime) -> list[tuple[Budget, Hold]]:
    """The holds a request authorized at ``now`` takes, in the one global lock order.

    The order is: deepest owner first (a key's budgets before its account's,
    the account's before its reseller's, up to the root), then budget id. An
    account's depth never changes, so every transaction takes any two counters
    in the same order (no deadlock), and the hot counters near the top of a
    busy tree are locked last, held only until the commit right after.
    """
    chain = key.account.ancestor_ids()
    planned = [(budget, hold_for(budget, chain.index(budget.account_id), now)) for budget in budgets]  # type: ignore[attr-defined]
    return sorted(planned, key=lambda pair: lock_order(pair[1]))


async def take(conn: BaseDBAsyncClient, key: ApiKey, planned: Sequence[tuple[Budget, Hold]], amounts: Amounts) -> None:
    """Hold ``amounts`` in every planned counter, or raise BUDGET_EXHAUSTED.

    Must run inside a transaction on ``conn``: a refusal leaves holds already
    taken for the caller's rollback to undo.
    """
    for budget, hold in planned:
        amount = amounts.of(budget.metric)
        if amount > budget.limit_amount:
            raise _exhausted(budget, key)
        if not await _try_hold(conn, budget, hold.period_index, amount):
            await _ensure_counter(conn, budget, hold.period_index)
            if not await _try_hold(conn, budget, hold.period_index, amount):
                raise _exhausted(budget, key)


class ReservationConflict(Exception):
    """A counter a batch had locked moved under it (a store without row locks): nothing may be kept."""


class BatchHolds:
    """The reservations of many requests, decided in order against their counters read once under lock.

    :meth:`lock` locks every counter the batch touches in the one global lock order (so
    batches and single reservations cannot deadlock) and reads it; :meth:`take` then
    decides each request exactly as :func:`take` would, against what is left after the
    requests before it; :meth:`apply` moves each counter once, by the sum. Each of
    those UPDATEs keeps the condition of a single hold, so a store without row locks
    (SQLite) cannot pass a limit either: it raises :class:`ReservationConflict` instead.

    Example::

        holds = await BatchHolds.lock(conn, [pair for planned in plans for pair in planned])
        for key, planned, amounts in requests:
            holds.take(key, planned, amounts)   # raises BUDGET_EXHAUSTED, taking nothing
        await holds.apply(conn)
    """

    def __init__(self, budgets: dict[Hold, Budget], counters: dict[Hold, tuple[int, int]]) -> None:
        self._budgets = budgets
        self._counters = counters  # (spent, reserved) as locked
        self._taken: dict[Hold, int] = {}

    @classmethod
    async def lock(cls, conn: BaseDBAsyncClient, planned: Sequence[tuple[Budget, Hold]]) -> BatchHolds:
        budgets = {hold: budget for budget, hold in planned}
        counters: dict[Hold, tuple[int, int]] = {}
        for hold in sorted(budgets, key=lock_order):
            counter = await _locked_counter(conn, hold)
            if counter is None:
                await _ensure_counter(conn, budgets[hold], hold.period_index)
                counter = await _locked_counter(conn, hold)
            counters[hold] = counter or (0, 0)
        return cls(budgets, counters)

    def take(self, key: ApiKey, planned: Sequence[tuple[Budget, Hold]], amounts: Amounts) -> None:
        """Hold ``amounts`` in every planned counter, or raise BUDGET_EXHAUSTED and hold nothing."""
        for budget, hold in planned:
            amount = amounts.of(budget.metric)
            spent, reserved = self._counters[hold]
            if (
                amount > budget.limit_amount
                or reserved + self._taken.get(hold, 0) > budget.limit_amount - amount - spent
            ):
                raise _exhausted(budget, key)
        for budget, hold in planned:
            self._taken[hold] = self._taken.get(hold, 0) + amounts.of(budget.metric)

    async def apply(self, conn: BaseDBAsyncClient) -> None:
        for hold in sorted(self._taken, key=lock_order):
            amount = self._taken[hold]
            if amount and not await _try_hold(conn, self._budgets[hold], hold.period_index, amount):
                raise ReservationConflict


async def _locked_counter(conn: BaseDBAsyncClient, hold: Hold) -> tuple[int, int] | None:
    bind = Binder(conn.capabilities.dialect)
    lock = " FOR UPDATE" if conn.capabilities.dialect == "postgres" else ""  # SQLite: one writer at a time
    sql = (
        "SELECT spent, reserved FROM budget_counter "  # noqa: S608 - fixed text, bound values
        f"WHERE budget_id = {bind(hold.budget_id)} AND period_index = {bind(hold.period_index)}{lock}"
    )
    rows = await conn.execute_query_dict(sql, bind.values)
    return (int(rows[0]["spent"]), int(rows[0]["reserved"])) if rows else None


async def reserve(
    conn: BaseDBAsyncClient, key: ApiKey, budgets: Sequence[Budget], amounts: Amounts, now: datetime
) -> list[Hold]:
    """:func:`plan` and :func:`take` in one call; returns the holds in lock order."""
    planned = plan(key, budgets, now)
    await take(conn, key, planned, amounts)
    return [hold for _, hold in planned]


async def move(conn: BaseDBAsyncClient, holds: Sequence[Hold], *, release: Amounts, charge: Amounts) -> None:
    """In each held counter: ``reserved -= release``, ``spent += charge`` (per its metric), in the lock order.

    (Holds a budget created later joined are appended: stored order is not the lock order.)
    """
    for hold in sorted(holds, key=lock_order):
        await _move_counter(conn, hold, release.of(hold.metric), charge.of(hold.metric))


class Moves:
    """The counter moves of many settles, summed per counter, applied in the one lock order.

    Example::

        moves = Moves()
        moves.add(holds, release=reserved, charge=real)   # once per settled request
        await moves.apply(conn)                           # one UPDATE per counter
    """

    def __init__(self) -> None:
        self._totals: dict[Hold, list[int]] = {}

    def add(self, holds: Sequence[Hold], *, release: Amounts, charge: Amounts) -> None:
        for hold in holds:
            total = self._totals.setdefault(hold, [0, 0])
            total[0] += release.of(hold.metric)
            total[1] += charge.of(hold.metric)

    async def apply(self, conn: BaseDBAsyncClient) -> None:
        for hold in sorted(self._totals, key=lock_order):
            release, charge = self._totals[hold]
            # Each statement moves at most AMOUNT_CAP, as a single settle would; sums of absurd
            # reports take a few statements (``spent`` saturates at COUNTER_CAP on the way).
            while True:
                step_release = max(-AMOUNT_CAP, min(AMOUNT_CAP, release))
                step_charge = max(-AMOUNT_CAP, min(AMOUNT_CAP, charge))
                await _move_counter(conn, hold, step_release, step_charge)
                release -= step_release
                charge -= step_charge
                if not release and not charge:
                    break


async def _move_counter(conn: BaseDBAsyncClient, hold: Hold, release: int, charge: int) -> None:
    bind = Binder(conn.capabilities.dialect)
    sql = (
        f"UPDATE budget_counter SET reserved = reserved - {bind(release)}, "  # noqa: S608
        f"spent = CASE WHEN spent >= {bind(COUNTER_CAP - charge)} THEN {bind(COUNTER_CAP)} "
        f"ELSE spent + {bind(charge)} END "
        f"WHERE budget_id = {bind(hold.budget_id)} AND period_index = {bind(hold.period_index)}"
    )
    await conn.execute_query(sql, bind.values)
