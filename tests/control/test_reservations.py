"""Budgets with hard reservations, against a real database (SQLite or PostgreSQL, see tests/conftest.py).

No gRPC here: these tests call ``claudeopus.control.domain`` (authorize, settle,
expire_stale, create_budget) and the sweeper directly, with an injected clock,
and check the budget counters and usage rows they leave behind, to the unit.
The world and helpers are in tests/support/world.py.

Every authorize below reserves 11 input and 22 output tokens (33 in total)
unless it says otherwise, and every settle reports 5 input and 7 output tokens
(12 in total).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from claudeopus.control.domain import budgets, gateway, price_changes, reservations
from claudeopus.control.domain.api_keys import IssuedKey
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from claudeopus.control.domain.periods import period_bounds, period_index
from claudeopus.control.models import (
    Budget,
    BudgetCounter,
    BudgetMetric,
    BudgetPeriod,
    UsageRecord,
    UsageSource,
    UsageStatus,
)
from claudeopus.control.sweeper import ReservationSweeper
from tests.support.clock import FakeClock
from tests.support.prices import set_price
from tests.support.world import (
    COST,
    DAILY,
    IN,
    INPUT_TOKENS,
    LATER,
    MAX_AGE,
    MONTHLY,
    NOW,
    OUT,
    OUTPUT_TOKENS,
    RESERVED,
    TOTAL,
    TOTAL_TOKENS,
    World,
    assert_counters_match_rows,
    authorize,
    counter,
    exhausted,
    fails,
    set_budget,
    settle,
    settle_input,
)


def budget_name(budget: Budget) -> str:
    return f"budgets/{budget.id}"


# -- reserve and settle ----------------------------------------------------------


async def test_authorize_holds_in_every_budget_and_settle_moves_the_real_usage(world: World) -> None:
    on_key = await set_budget(world, world.user, 1000, key=world.key, metric=TOTAL_TOKENS)
    on_user = await set_budget(world, world.user, 1000, metric=INPUT_TOKENS)
    on_reseller = await set_budget(world, world.reseller, 1000, metric=OUTPUT_TOKENS, period=DAILY)
    on_other_key = await set_budget(world, world.user, 1000, key=world.other_key)
    on_sibling = await set_budget(world, world.sibling, 1000)
    untouched = (on_other_key, on_sibling)

    first = await authorize(world.key)
    assert first.enforced_output_tokens == OUT
    record = await UsageRecord.get(id=first.record.id)
    assert (record.status, record.estimated_input_tokens, record.max_output_tokens) == (UsageStatus.RESERVED, 11, 22)
    assert record.reserved_cost_micros == 0
    day = period_index(DAILY, NOW)
    assert held(record.reserved_counters) == f"{on_key.id}:0:3,{on_user.id}:0:1,{on_reseller.id}:{day}:2"
    assert await counter(on_key) == (0, 33)
    assert await counter(on_user) == (0, 11)
    assert await counter(on_reseller) == (0, 22)
    await assert_counters_match_rows()

    second = await authorize(world.key, input_tokens=100, max_output_tokens=50)
    assert await counter(on_key) == (0, 33 + 150)
    assert await counter(on_user) == (0, 11 + 100)
    assert await counter(on_reseller) == (0, 22 + 50)

    settled = await settle(first, input_tokens=5, output_tokens=7)
    assert settled.already_settled is False
    assert await counter(on_key) == (12, 150)
    assert await counter(on_user) == (5, 100)
    assert await counter(on_reseller) == (7, 50)
    await assert_counters_match_rows()

    await settle(second, input_tokens=90, output_tokens=40)
    assert await counter(on_key) == (12 + 130, 0)
    assert await counter(on_user) == (5 + 90, 0)
    assert await counter(on_reseller) == (7 + 40, 0)
    for budget in untouched:
        assert await counter(budget) == (0, 0)
    await assert_counters_match_rows()

    # The sibling's request holds only in its own account's budget and the reseller's.
    third = await authorize(world.sibling_key)
    assert await counter(on_sibling) == (0, 33)
    assert await counter(on_reseller) == (47, 22)
    assert await counter(on_key) == (142, 0)
    await settle(third, input_tokens=1, output_tokens=2)
    assert await counter(on_sibling) == (3, 0)
    assert await counter(on_reseller) == (49, 0)
    await assert_counters_match_rows()


async def test_a_request_without_budgets_holds_nothing(world: World) -> None:
    await set_budget(world, world.sibling, 1000)  # someone else's
    authorized = await authorize(world.key)
    assert authorized.enforced_output_tokens == 0
    record = await UsageRecord.get(id=authorized.record.id)
    assert (record.reserved_counters, record.reserved_cost_micros) == ("", 0)
    await settle(authorized)
    assert [(c.spent, c.reserved) for c in await BudgetCounter.all()] == [(0, 0)]


# -- refusals --------------------------------------------------------------------


SCOPES = ("key", "account", "reseller")
PER_REQUEST = {INPUT_TOKENS: IN, OUTPUT_TOKENS: OUT, TOTAL_TOKENS: IN + OUT}


@pytest.mark.parametrize("metric", [INPUT_TOKENS, OUTPUT_TOKENS, TOTAL_TOKENS])
@pytest.mark.parametrize("scope", SCOPES)
async def test_a_budget_admits_exactly_n_requests(world: World, scope: str, metric: BudgetMetric) -> None:
    n = 3
    limit = n * PER_REQUEST[metric]
    if scope == "key":
        budget = await set_budget(world, world.user, limit, key=world.key, metric=metric)
    elif scope == "account":
        budget = await set_budget(world, world.user, limit, metric=metric)
    else:
        budget = await set_budget(world, world.reseller, limit, metric=metric)

    for _ in range(n):
        await authorize(world.key)
    assert await counter(budget) == (0, limit)

    request_id = str(uuid.uuid4())
    error = await exhausted(authorize(world.key, request_id=request_id))
    expected = {"budget_scope": scope, "metric": metric.name, "period": "TOTAL"}
    if scope != "reseller":
        expected["budget"] = budget_name(budget)
    assert error.metadata == expected
    if scope == "reseller":  # a budget above: that one is exhausted, nothing about it (no kind, no limit)
        assert error.message == (
            "You exceeded a budget set by your reseller (reseller budget): this request was not sent upstream."
        )
    else:
        whose = {"key": "this API key's", "account": "your account's"}[scope]
        words = {INPUT_TOKENS: "input-token", OUTPUT_TOKENS: "output-token", TOTAL_TOKENS: "token"}[metric]
        assert error.message == (
            f"You exceeded {whose} total {words} budget ({scope} budget): this request was not sent upstream."
        )

    # The refusal left nothing: no row, no hold.
    assert not await UsageRecord.filter(request_id=request_id).exists()
    assert await UsageRecord.all().count() == n
    assert await counter(budget) == (0, limit)
    await assert_counters_match_rows()


async def test_a_request_larger_than_the_whole_limit_is_refused_up_front(world: World) -> None:
    budget = await set_budget(world, world.user, 32)
    error = await exhausted(authorize(world.key))
    assert error.metadata["budget_scope"] == "account"
    await authorize(world.key, input_tokens=10)  # 32 fits exactly
    assert await counter(budget) == (0, 32)
    assert await UsageRecord.all().count() == 1


async def test_holds_are_taken_deepest_owner_first_then_by_budget_id(world: World) -> None:
    """The stored holds (also the lock order) do not follow creation order: key, account, reseller, then id."""
    on_reseller = await set_budget(world, world.reseller, 1000)
    user_daily = await set_budget(world, world.user, 1000, period=DAILY)
    key_total = await set_budget(world, world.user, 1000, key=world.key)
    user_monthly = await set_budget(world, world.user, 1000, metric=OUTPUT_TOKENS, period=MONTHLY)
    key_input = await set_budget(world, world.user, 1000, key=world.key, metric=INPUT_TOKENS)
    authorized = await authorize(world.key)
    day, month = period_index(DAILY, NOW), period_index(MONTHLY, NOW)
    assert held(authorized.record.reserved_counters) == (
        f"{key_total.id}:0:3,{key_input.id}:0:1,{user_daily.id}:{day}:3,{user_monthly.id}:{month}:2,{on_reseller.id}:0:3"
    )
    await settle(authorized)
    assert [await counter(b) for b in (key_total, key_input, user_daily, user_monthly, on_reseller)] == [
        (12, 0),
        (5, 0),
        (12, 0),
        (7, 0),
        (12, 0),
    ]


@pytest.mark.parametrize("refused_by", [2, 3])
async def test_a_refusal_after_earlier_holds_rolls_them_back(world: World, refused_by: int) -> None:
    # Created against the lock order (reseller first): holds go key, user, reseller all the same.
    refusing = await set_budget(world, world.reseller, 33 if refused_by == 3 else 1000, period=MONTHLY)
    on_user = await set_budget(world, world.user, 33 if refused_by == 2 else 1000, period=DAILY)
    on_key = await set_budget(world, world.user, 1000, key=world.key)
    budgets_ = (on_key, on_user, refusing)

    await authorize(world.key)
    before = [await counter(b) for b in budgets_]
    assert before == [(0, 33), (0, 33), (0, 33)]

    request_id = str(uuid.uuid4())
    error = await exhausted(authorize(world.key, request_id=request_id))
    refused = on_user if refused_by == 2 else refusing
    expected = {"budget_scope": "account" if refused_by == 2 else "reseller", "metric": "TOTAL_TOKENS"}
    expected["period"] = refused.period.name
    if refused_by == 2:
        expected["budget"] = budget_name(on_user)
    assert error.metadata == expected
    assert [await counter(b) for b in budgets_] == before
    assert not await UsageRecord.filter(request_id=request_id).exists()
    assert await UsageRecord.all().count() == 1
    await assert_counters_match_rows()


async def test_a_refusal_in_a_new_period_leaves_no_counter_behind(world: World) -> None:
    """The first budget's counter for the new day is created and held, then rolled back with the refusal."""
    on_key = await set_budget(world, world.user, 1000, key=world.key, period=DAILY)
    on_user = await set_budget(world, world.user, 30, period=DAILY)  # smaller than any request
    tomorrow = NOW + timedelta(days=1)
    request_id = str(uuid.uuid4())
    error = await exhausted(authorize(world.key, now=tomorrow, request_id=request_id))
    assert error.metadata == {
        "budget_scope": "account",
        "metric": "TOTAL_TOKENS",
        "period": "DAILY",
        "budget": budget_name(on_user),
    }
    assert not await BudgetCounter.filter(budget_id=on_key.id, period_index=period_index(DAILY, tomorrow)).exists()
    assert await counter(on_key, tomorrow) == (0, 0)
    assert await UsageRecord.all().count() == 0


async def test_the_reseller_budget_caps_its_whole_subtree(world: World) -> None:
    on_reseller = await set_budget(world, world.reseller, 66)
    on_user = await set_budget(world, world.user, 66)  # as large as the reseller's: allowed
    await authorize(world.sibling_key)
    await authorize(world.key)
    assert await counter(on_reseller) == (0, 66)
    assert await counter(on_user) == (0, 33)

    # The user still has room in its own budget, but the reseller has none.
    error = await exhausted(authorize(world.key))
    assert error.metadata == {"budget_scope": "reseller", "metric": "TOTAL_TOKENS", "period": "TOTAL"}
    assert "budget" not in error.metadata
    assert "set by your reseller" in error.message
    assert "token" not in error.message and "total" not in error.message, "not even the kind of the budget above"
    error = await exhausted(authorize(world.sibling_key))
    assert error.metadata["budget_scope"] == "reseller"
    # For the reseller's own key the same budget is its account's.
    error = await exhausted(authorize(world.reseller_key))
    assert error.metadata == {
        "budget_scope": "account",
        "metric": "TOTAL_TOKENS",
        "period": "TOTAL",
        "budget": budget_name(on_reseller),
    }
    # Outside the reseller's subtree nothing applies.
    assert (await authorize(world.direct_key)).enforced_output_tokens == 0

    assert await counter(on_reseller) == (0, 66)
    assert await counter(on_user) == (0, 33)
    await assert_counters_match_rows()


# -- concurrency -----------------------------------------------------------------


def sort_results(results: list[object]) -> tuple[list[gateway.Authorized], list[ResourceExhausted]]:
    admitted = [r for r in results if isinstance(r, gateway.Authorized)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(admitted) + len(refused) == len(results), [r for r in results if isinstance(r, BaseException)]
    assert all(r.reason is Reason.BUDGET_EXHAUSTED for r in refused)
    return admitted, refused


@pytest.mark.parametrize("new_period", [False, True], ids=["counter-exists", "counter-created-concurrently"])
async def test_concurrent_authorizes_take_exactly_what_the_budget_admits(world: World, new_period: bool) -> None:
    budget = await set_budget(world, world.user, 17 * RESERVED, period=DAILY)
    when = NOW + timedelta(days=1) if new_period else NOW
    results = await asyncio.gather(*(authorize(world.key, now=when) for _ in range(60)), return_exceptions=True)
    admitted, refused = sort_results(results)
    assert (len(admitted), len(refused)) == (17, 43)
    assert await counter(budget, when) == (0, 17 * RESERVED)
    assert await UsageRecord.all().count() == 17
    assert await BudgetCounter.filter(budget_id=budget.id).count() == (2 if new_period else 1)
    await assert_counters_match_rows()


async def test_concurrent_authorizes_across_overlapping_budgets(world: World) -> None:
    """Two keys with their own caps share the reseller's budget, whose id lies between theirs."""
    on_key = await set_budget(world, world.user, 10 * RESERVED, key=world.key)
    on_reseller = await set_budget(world, world.reseller, 17 * RESERVED)
    on_sibling_key = await set_budget(world, world.sibling, 10 * RESERVED, key=world.sibling_key)
    calls = [authorize(k) for _ in range(30) for k in (world.key, world.sibling_key)]
    admitted, _ = sort_results(await asyncio.gather(*calls, return_exceptions=True))
    assert len(admitted) == 17
    mine = sum(a.record.api_key_id == world.key.key.id for a in admitted)  # type: ignore[attr-defined]
    assert mine <= 10 and 17 - mine <= 10
    assert await counter(on_key) == (0, mine * RESERVED)
    assert await counter(on_sibling_key) == (0, (17 - mine) * RESERVED)
    assert await counter(on_reseller) == (0, 17 * RESERVED)
    await assert_counters_match_rows()


async def test_settles_racing_the_sweeper_end_at_the_real_usage(world: World) -> None:
    budget = await set_budget(world, world.user, 1000)
    opened = [await authorize(world.key) for _ in range(10)]
    late = NOW + MAX_AGE + timedelta(minutes=1)
    results = await asyncio.gather(
        *(settle(a, now=late) for a in opened), gateway.expire_stale(late, MAX_AGE), return_exceptions=True
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    assert all(s.already_settled is False for s in results[:-1])  # type: ignore[union-attr]
    assert await counter(budget) == (10 * 12, 0)
    rows = await UsageRecord.all()
    assert {(r.status, r.source, r.input_tokens, r.output_tokens) for r in rows} == {
        (UsageStatus.SUCCEEDED, UsageSource.REPORTED, 5, 7)
    }
    await assert_counters_match_rows()


# -- cost budgets ------------------------------------------------------------------


async def test_a_cost_budget_reserves_and_charges_at_the_price_in_force(world: World) -> None:
    await set_price(world.admin, "m-1", 1_500_000, 2_000_000)
    budget = await set_budget(world, world.user, 1000, metric=COST)
    tokens = await set_budget(world, world.user, 1000, key=world.key)

    # 11 * 1.5 + 22 * 2 = 60.5 micro-units, rounded up.
    first = await authorize(world.key)
    assert first.record.reserved_cost_micros == 61
    assert await counter(budget) == (0, 61)
    assert await counter(tokens) == (0, 33)

    # The reseller marks the model up; the price in force is the highest per component.
    await price_changes.create_price(
        world.admin,
        parent_id=world.reseller.id,
        model="m-1",
        input_micros=3_000_000,
        output_micros=2_000_000,
        request_id="",
    )
    second = await authorize(world.key)
    assert second.record.reserved_cost_micros == 33 + 44
    assert await counter(budget) == (0, 61 + 77)

    # Settle charges the real tokens at the price in force then: 5 * 3 + 7 * 2 = 29.
    settled = await settle(first)
    assert settled.record.cost_micros == 29
    assert await counter(budget) == (29, 77)
    settled = await settle(second, input_tokens=1, output_tokens=1)  # 3 + 2
    assert settled.record.cost_micros == 5
    assert await counter(budget) == (34, 0)
    assert await counter(tokens) == (14, 0)
    assert (await UsageRecord.get(id=first.record.id)).cost_micros == 29
    await assert_counters_match_rows()


async def test_a_cost_budget_admits_exactly_what_it_can_pay_for(world: World) -> None:
    await set_price(world.admin, "m-1", 1_500_000, 2_000_000)
    budget = await set_budget(world, world.reseller, 2 * 61, metric=COST, period=MONTHLY)
    await authorize(world.key)
    await authorize(world.sibling_key)
    error = await exhausted(authorize(world.key))
    assert error.metadata == {"budget_scope": "reseller", "metric": "COST_MICROS", "period": "MONTHLY"}
    assert "set by your reseller" in error.message and "cost" not in error.message
    assert await counter(budget) == (0, 122)
    # A model priced at zero costs nothing, so a cost budget never refuses it.
    free = await authorize(world.key, model="m-free")
    assert (free.record.reserved_cost_micros, free.enforced_output_tokens) == (0, 22)
    assert await counter(budget) == (0, 122)
    # A model without any price is not served at all: unpriced, it would escape the cost budget.
    with pytest.raises(PermissionDenied) as refused:
        await authorize(world.key, model="unpriced")
    assert refused.value.reason is Reason.MODEL_NOT_AVAILABLE
    assert await counter(budget) == (0, 122)
    assert not await UsageRecord.filter(model="unpriced").exists()
    await assert_counters_match_rows()


# -- output policy ----------------------------------------------------------------


POLICY = gateway.OutputPolicy(default=100, per_model=(("m-big", 1000),))


def test_output_policy_prefers_the_request_then_the_model_then_the_default() -> None:
    assert POLICY.output_tokens("m-1", 7) == 7
    assert POLICY.output_tokens("m-big", 7) == 7
    assert POLICY.output_tokens("m-big", 0) == 1000
    assert POLICY.output_tokens("m-1", 0) == 100
    assert gateway.OutputPolicy().output_tokens("m-1", 0) == 4096


async def test_without_budgets_nothing_is_enforced(world: World) -> None:
    for model, requested, stored in (("m-1", 0, 100), ("m-big", 0, 1000), ("m-big", 7, 7)):
        authorized = await authorize(world.key, model=model, max_output_tokens=requested, policy=POLICY)
        assert authorized.enforced_output_tokens == 0
        assert authorized.record.max_output_tokens == stored


async def test_with_budgets_the_reserved_output_is_enforced(world: World) -> None:
    budget = await set_budget(world, world.user, 11 + 100 + 11 + 1000 + 11 + 7 + 11 + 4096, key=world.key)
    cases = (("m-1", 0, POLICY, 100), ("m-big", 0, POLICY, 1000), ("m-big", 7, POLICY, 7))
    reserved = 0
    for model, requested, policy, enforced in (*cases, ("m-1", 0, gateway.OutputPolicy(), 4096)):
        authorized = await authorize(world.key, model=model, max_output_tokens=requested, policy=policy)
        assert authorized.enforced_output_tokens == enforced
        assert authorized.record.max_output_tokens == enforced
        reserved += 11 + enforced
        assert await counter(budget) == (0, reserved)
    await exhausted(authorize(world.key, max_output_tokens=1))
    await assert_counters_match_rows()


async def test_the_default_output_decides_admission(world: World) -> None:
    await set_budget(world, world.user, 11 + 100, key=world.key)
    await exhausted(authorize(world.key, model="m-big", max_output_tokens=0, policy=POLICY))
    assert (await authorize(world.key, model="m-1", max_output_tokens=0, policy=POLICY)).enforced_output_tokens == 100


# -- settle ------------------------------------------------------------------------


async def test_a_second_settle_changes_no_counter(world: World) -> None:
    on_key = await set_budget(world, world.user, 1000, key=world.key)
    on_reseller = await set_budget(world, world.reseller, 1000, metric=OUTPUT_TOKENS, period=DAILY)
    authorized = await authorize(world.key)
    first = await settle(authorized)
    assert first.already_settled is False
    after = (await counter(on_key), await counter(on_reseller))
    assert after == ((12, 0), (7, 0))

    for later in (LATER, LATER + timedelta(days=2)):
        again = await gateway.settle(
            settle_input(
                authorized.record.request_id,
                input_tokens=500,
                output_tokens=700,
                status=UsageStatus.UPSTREAM_ERROR,
                source=UsageSource.ESTIMATED,
            ),
            later,
        )
        assert again.already_settled is True
        assert (again.record.input_tokens, again.record.output_tokens) == (5, 7)
        assert (await counter(on_key), await counter(on_reseller)) == after
    await assert_counters_match_rows()


async def test_a_retried_authorize_holds_nothing_twice(world: World) -> None:
    budget = await set_budget(world, world.user, 1000, key=world.key)
    request_id = str(uuid.uuid4())
    first = await authorize(world.key, request_id=request_id)
    again = await authorize(world.key, request_id=request_id)
    assert again.record.id == first.record.id
    assert again.enforced_output_tokens == 22
    assert await counter(budget) == (0, 33)
    assert await UsageRecord.all().count() == 1


async def test_a_retried_authorize_is_answered_even_when_the_budget_is_full(world: World) -> None:
    """The retry of an authorize that took the last of a budget finds its reservation, not BUDGET_EXHAUSTED."""
    budget = await set_budget(world, world.user, 33, key=world.key)
    request_id = str(uuid.uuid4())
    first = await authorize(world.key, request_id=request_id)
    assert await counter(budget) == (0, 33)
    again = await authorize(world.key, request_id=request_id)
    assert again.record.id == first.record.id
    assert again.enforced_output_tokens == 22
    assert await counter(budget) == (0, 33)
    # The id stays taken for another key, and once settled, whatever the budget says.
    await fails(AlreadyExists, Reason.REQUEST_ID_CONFLICT, authorize(world.other_key, request_id=request_id))
    await settle(first)
    assert await counter(budget) == (12, 0)
    await fails(FailedPrecondition, Reason.REQUEST_ID_CONFLICT, authorize(world.key, request_id=request_id))
    assert await counter(budget) == (12, 0)
    assert await UsageRecord.all().count() == 1


async def test_a_settle_after_the_budget_was_removed_moves_the_others(world: World) -> None:
    removed = await set_budget(world, world.user, 1000, key=world.key)
    kept = await set_budget(world, world.reseller, 1000)
    authorized = await authorize(world.key)
    await budgets.delete_budget(world.admin, removed.id)
    settled = await settle(authorized)
    assert settled.already_settled is False
    assert await counter(kept) == (12, 0)
    assert not await BudgetCounter.filter(budget_id=removed.id).exists()


async def test_overshoot_passes_the_limit_by_exactly_the_excess(world: World) -> None:
    budget = await set_budget(world, world.user, 2 * RESERVED, key=world.key)
    first, second = await authorize(world.key), await authorize(world.key)
    await exhausted(authorize(world.key))
    # The upstream ignored max_tokens: 10 output tokens more than reserved.
    await settle(first, input_tokens=IN, output_tokens=OUT + 10)
    assert await counter(budget) == (43, 33)
    await settle(second, input_tokens=IN, output_tokens=OUT)
    assert await counter(budget) == (2 * RESERVED + 10, 0)
    # Past the limit, every further request is refused, however small.
    await exhausted(authorize(world.key))
    await exhausted(authorize(world.key, input_tokens=0, max_output_tokens=1))
    assert await counter(budget) == (76, 0)
    await assert_counters_match_rows()


async def test_an_input_overshoot_refuses_even_an_empty_input(world: World) -> None:
    budget = await set_budget(world, world.user, 11, metric=INPUT_TOKENS)
    await settle(await authorize(world.key), input_tokens=15, output_tokens=1)
    assert await counter(budget) == (15, 0)
    await exhausted(authorize(world.key, input_tokens=0))


# -- periods -----------------------------------------------------------------------


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


ROLLOVERS = [
    pytest.param(DAILY, at(2030, 1, 2, 23, 59, 59), id="daily"),
    pytest.param(DAILY, at(2030, 12, 31, 23, 59, 59), id="daily-new-year"),
    pytest.param(MONTHLY, at(2030, 1, 31, 23, 59, 59), id="monthly"),
    pytest.param(MONTHLY, at(2032, 2, 29, 23, 59, 59), id="monthly-leap-february"),
    pytest.param(MONTHLY, at(2030, 12, 31, 23, 59, 59), id="monthly-december-january"),
]


@pytest.mark.parametrize(("period", "last"), ROLLOVERS)
async def test_a_new_period_admits_again_and_late_settles_stay_in_their_period(
    world: World, period: BudgetPeriod, last: datetime
) -> None:
    first = last + timedelta(seconds=1)  # 00:00:00 of the next day / month
    assert period_index(period, first) == period_index(period, last) + 1
    budget = await set_budget(world, world.user, RESERVED, key=world.key, period=period, now=last - timedelta(hours=1))

    before_midnight = await authorize(world.key, now=last)
    await exhausted(authorize(world.key, now=last))
    assert await counter(budget, last) == (0, 33)

    after_midnight = await authorize(world.key, now=first)
    await exhausted(authorize(world.key, now=first))
    assert await counter(budget, first) == (0, 33)

    # Settled after midnight, charged to the period it was authorized in.
    await settle(before_midnight, now=first + timedelta(seconds=5))
    assert await counter(budget, last) == (12, 0)
    assert await counter(budget, first) == (0, 33)
    stored = await UsageRecord.get(id=before_midnight.record.id)
    assert held(stored.reserved_counters) == f"{budget.id}:{period_index(period, last)}:3"

    view = await budgets.get_budget(world.admin, budget.id, first)
    assert (view.spent, view.reserved, view.remaining) == (0, 33, 0)
    assert (view.period_start, view.period_end) == period_bounds(period, period_index(period, first))
    assert view.period_start == first

    await settle(after_midnight, now=first + timedelta(seconds=10))
    assert await counter(budget, first) == (12, 0)
    assert await counter(budget, last) == (12, 0)
    await assert_counters_match_rows()


def test_period_index_at_boundaries() -> None:
    assert period_index(DAILY, at(1970, 1, 1)) == 0
    assert period_index(DAILY, at(1969, 12, 31, 23, 59, 59)) == -1
    assert period_index(DAILY, at(2030, 1, 2)) == period_index(DAILY, at(2030, 1, 2, 23, 59, 59, 999999)) == 21916
    assert period_index(DAILY, at(2030, 1, 3)) == 21917
    assert period_index(MONTHLY, at(2030, 1, 1)) == 2030 * 12
    assert period_index(MONTHLY, at(2030, 12, 31, 23, 59, 59, 999999)) == 2030 * 12 + 11
    assert period_index(MONTHLY, at(2031, 1, 1)) == 2031 * 12
    assert period_index(TOTAL, at(2030, 6, 1)) == period_index(TOTAL, at(1999, 1, 1)) == 0
    # Another offset counts in UTC: 00:30 at +01:00 is 23:30 UTC the day (and month, year) before.
    plus_one = datetime(2031, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert period_index(DAILY, plus_one) == period_index(DAILY, at(2030, 12, 31))
    assert period_index(MONTHLY, plus_one) == 2030 * 12 + 11


def test_period_bounds_at_boundaries() -> None:
    assert period_bounds(DAILY, 0) == (at(1970, 1, 1), at(1970, 1, 2))
    assert period_bounds(DAILY, -1) == (at(1969, 12, 31), at(1970, 1, 1))
    assert period_bounds(DAILY, 21916) == (at(2030, 1, 2), at(2030, 1, 3))
    assert period_bounds(MONTHLY, 2030 * 12) == (at(2030, 1, 1), at(2030, 2, 1))
    assert period_bounds(MONTHLY, 2030 * 12 + 11) == (at(2030, 12, 1), at(2031, 1, 1))
    assert period_bounds(MONTHLY, 2032 * 12 + 1) == (at(2032, 2, 1), at(2032, 3, 1))
    assert period_bounds(TOTAL, 0) == (None, None)
    # Every moment lies in the bounds of its own index.
    moment = at(2029, 12, 30, 22)
    while moment < at(2030, 3, 2):
        for period in (DAILY, MONTHLY):
            start, end = period_bounds(period, period_index(period, moment))
            assert start is not None and end is not None
            assert start <= moment < end
            assert period_index(period, start) == period_index(period, moment)
            assert period_index(period, end) == period_index(period, moment) + 1
            assert period_index(period, end - timedelta(microseconds=1)) == period_index(period, moment)
        moment += timedelta(hours=7, minutes=13)


# -- expiry ------------------------------------------------------------------------


async def test_expire_stale_charges_stale_reservations_and_a_late_settle_replaces_the_charge(world: World) -> None:
    await set_price(world.admin, "m-1", 1_500_000, 2_000_000)
    tokens = await set_budget(world, world.user, 1000, key=world.key, period=DAILY)
    cost = await set_budget(world, world.reseller, 10_000, metric=COST)
    stale = await authorize(world.key)
    fresh = await authorize(world.key, now=NOW + timedelta(minutes=10))
    assert await counter(tokens) == (0, 66)
    assert await counter(cost) == (0, 122)

    swept_at = NOW + MAX_AGE + timedelta(seconds=1)
    assert await gateway.expire_stale(swept_at, MAX_AGE) == 1
    expired = await UsageRecord.get(id=stale.record.id)
    assert (expired.status, expired.source, expired.settled_at) == (UsageStatus.EXPIRED, UsageSource.RESERVED, swept_at)
    assert (expired.input_tokens, expired.output_tokens, expired.cost_micros) == (11, 22, 61)
    assert (expired.latency_us, expired.http_status) == (0, 0)
    assert (await UsageRecord.get(id=fresh.record.id)).status == UsageStatus.RESERVED
    assert await counter(tokens) == (33, 33)
    assert await counter(cost) == (61, 61)
    await assert_counters_match_rows()

    # Nothing more is stale: a second run changes nothing.
    assert await gateway.expire_stale(swept_at, MAX_AGE) == 0
    assert await counter(tokens) == (33, 33)
    assert await counter(cost) == (61, 61)

    # The late settle replaces the charge by the real usage: 5 * 1.5 + 7 * 2 = 21.5 -> 22.
    late = await settle(stale, now=swept_at + timedelta(minutes=1))
    assert late.already_settled is False
    assert (late.record.status, late.record.source, late.record.cost_micros) == (
        UsageStatus.SUCCEEDED,
        UsageSource.REPORTED,
        22,
    )
    assert await counter(tokens) == (12, 33)
    assert await counter(cost) == (22, 61)
    await assert_counters_match_rows()

    # ... once.
    again = await gateway.settle(
        settle_input(stale.record.request_id, input_tokens=100, output_tokens=100), swept_at + timedelta(minutes=2)
    )
    assert again.already_settled is True
    assert await counter(tokens) == (12, 33)
    assert await counter(cost) == (22, 61)
    assert await gateway.expire_stale(swept_at + timedelta(minutes=2), MAX_AGE) == 0
    assert await counter(tokens) == (12, 33)

    # The fresh one expires exactly when it is older than MAX_AGE, not at MAX_AGE.
    assert await gateway.expire_stale(NOW + timedelta(minutes=10) + MAX_AGE, MAX_AGE) == 0
    assert await gateway.expire_stale(NOW + timedelta(minutes=10) + MAX_AGE + timedelta(microseconds=1), MAX_AGE) == 1
    assert await counter(tokens) == (12 + 33, 0)
    assert await counter(cost) == (22 + 61, 0)
    await assert_counters_match_rows()


async def test_a_late_settle_above_the_reservation_charges_the_real_usage(world: World) -> None:
    budget = await set_budget(world, world.user, RESERVED, key=world.key)
    stale = await authorize(world.key)
    assert await gateway.expire_stale(NOW + timedelta(hours=1), MAX_AGE) == 1
    assert await counter(budget) == (33, 0)
    await settle(stale, input_tokens=11, output_tokens=40, now=NOW + timedelta(hours=2))
    assert await counter(budget) == (51, 0)
    await assert_counters_match_rows()


async def test_expiry_charges_the_reserved_cost_even_after_a_price_change(world: World) -> None:
    price = await set_price(world.admin, "m-1", 1_500_000, 2_000_000)
    budget = await set_budget(world, world.user, 61, metric=COST)
    authorized = await authorize(world.key)
    assert await counter(budget) == (0, 61)
    await price_changes.update_price(
        world.admin, price.id, paths=["*"], input_micros=3_000_000, output_micros=4_000_000, now=NOW
    )
    assert await gateway.expire_stale(NOW + timedelta(hours=1), MAX_AGE) == 1
    assert (await UsageRecord.get(id=authorized.record.id)).cost_micros == 61
    assert await counter(budget) == (61, 0)


@pytest.mark.parametrize("metric", [TOTAL_TOKENS, COST])
async def test_a_settle_with_absurd_usage_still_closes_the_reservation(world: World, metric: BudgetMetric) -> None:
    await set_price(world.admin, "m-1", 10**12, 10**12)
    budget = await set_budget(world, world.user, reservations.AMOUNT_CAP, metric=metric)
    await settle(await authorize(world.key))  # something spent already
    authorized = await authorize(world.key)
    settled = await settle(authorized, input_tokens=2**62, output_tokens=2**62)  # cost saturates at 2**63 - 1
    assert settled.already_settled is False
    assert (await UsageRecord.get(id=authorized.record.id)).status == UsageStatus.SUCCEEDED
    spent, reserved = await counter(budget)
    # One absurd report moves a counter by at most AMOUNT_CAP: enough to exhaust any budget, never an overflow.
    assert type(spent) is int and reservations.AMOUNT_CAP <= spent <= reservations.COUNTER_CAP and reserved == 0
    await exhausted(authorize(world.key))


async def test_expire_stale_takes_the_oldest_first_in_batches(world: World) -> None:
    budget = await set_budget(world, world.user, 1000, key=world.key)
    opened = [await authorize(world.key, now=NOW + timedelta(seconds=i)) for i in (4, 0, 3, 1, 2)]
    later = NOW + timedelta(hours=1)
    assert await gateway.expire_stale(later, MAX_AGE, batch=2) == 2
    expired = {r.id for r in await UsageRecord.filter(status=UsageStatus.EXPIRED)}
    assert expired == {opened[1].record.id, opened[3].record.id}
    assert await counter(budget) == (66, 99)
    assert await gateway.expire_stale(later, MAX_AGE, batch=2) == 2
    assert await gateway.expire_stale(later, MAX_AGE, batch=2) == 1
    assert await gateway.expire_stale(later, MAX_AGE, batch=2) == 0
    assert await counter(budget) == (165, 0)
    await assert_counters_match_rows()


async def test_expire_stale_without_budgets_closes_the_row_at_its_reservation(world: World) -> None:
    authorized = await authorize(world.key, policy=POLICY, max_output_tokens=0)
    assert await gateway.expire_stale(NOW + timedelta(hours=1), MAX_AGE) == 1
    row = await UsageRecord.get(id=authorized.record.id)
    assert (row.status, row.source, row.input_tokens, row.output_tokens) == (
        UsageStatus.EXPIRED,
        UsageSource.RESERVED,
        11,
        100,
    )


def held(encoded: str) -> str:
    """Budget id, period index and metric of each stored hold, in stored (lock) order."""
    return ",".join(":".join(part.split(":")[:3]) for part in encoded.split(",") if part)


async def test_the_sweeper_expires_by_its_clock(world: World) -> None:
    budget = await set_budget(world, world.user, 1000, key=world.key)
    old = await authorize(world.key)
    young = await authorize(world.key, now=NOW + timedelta(minutes=5))
    clock = FakeClock(NOW + timedelta(minutes=1))
    sweeper = ReservationSweeper(timeout=MAX_AGE, interval=3600, clock=clock)

    assert await sweeper.sweep_once() == 0
    clock.now = NOW + MAX_AGE
    assert await sweeper.sweep_once() == 0  # exactly MAX_AGE old is not stale yet
    clock.now = NOW + MAX_AGE + timedelta(minutes=1)
    assert await sweeper.sweep_once() == 1
    assert (await UsageRecord.get(id=old.record.id)).settled_at == clock.now
    assert (await UsageRecord.get(id=young.record.id)).status == UsageStatus.RESERVED
    assert await counter(budget) == (33, 33)
    clock.now = NOW + timedelta(hours=1)
    assert await sweeper.sweep_once() == 1
    assert await sweeper.sweep_once() == 0
    assert await counter(budget) == (66, 0)
    await assert_counters_match_rows()


async def test_the_sweeper_keeps_going_while_batches_are_full(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = gateway.expire_stale

    async def small_batches(now: datetime, max_age: timedelta) -> int:
        closed = await functools.partial(original, batch=2)(now, max_age)
        calls.append(closed)
        return closed

    monkeypatch.setattr(gateway, "EXPIRE_BATCH", 2)
    monkeypatch.setattr(gateway, "expire_stale", small_batches)
    for i in range(5):
        await authorize(world.key, now=NOW + timedelta(seconds=i))
    sweeper = ReservationSweeper(timeout=MAX_AGE, interval=3600, clock=FakeClock(NOW + timedelta(hours=1)))
    assert await sweeper.sweep_once() == 5
    assert calls == [2, 2, 1]
    assert await UsageRecord.filter(status=UsageStatus.EXPIRED).count() == 5


async def test_the_running_sweeper_expires_in_the_background(world: World) -> None:
    budget = await set_budget(world, world.user, 1000, key=world.key)
    stale = await authorize(world.key)
    clock = FakeClock(NOW + timedelta(hours=1))
    async with ReservationSweeper(timeout=MAX_AGE, interval=0.01, clock=clock):
        for _ in range(500):
            if (await UsageRecord.get(id=stale.record.id)).status == UsageStatus.EXPIRED:
                break
            await asyncio.sleep(0.01)
    assert (await UsageRecord.get(id=stale.record.id)).status == UsageStatus.EXPIRED
    assert await counter(budget) == (33, 0)


# -- budgets created mid-period -----------------------------------------------------


async def closed_row(key: IssuedKey, created: datetime, input_tokens: int, output_tokens: int) -> gateway.Settlement:
    return await settle(
        await authorize(key, now=created),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        now=created + timedelta(seconds=1),
    )


async def spend_before_any_budget(world: World) -> None:
    """Usage rows of several periods, keys and accounts, all closed but one, before any budget exists.

    Costs are at 1 micro-unit per input and 3 per output token.
    """
    await set_price(world.admin, "m-1", 1_000_000, 3_000_000)
    await closed_row(world.key, at(2029, 12, 31, 23), 100, 200)  # last month (and day)
    await closed_row(world.key, at(2030, 1, 1), 5, 7)  # first moment of this month, previous day
    await closed_row(world.key, NOW - timedelta(hours=1), 3, 4)
    await closed_row(world.other_key, NOW - timedelta(hours=2), 20, 30)
    await closed_row(world.sibling_key, NOW - timedelta(hours=1), 1000, 2000)
    await closed_row(world.direct_key, NOW - timedelta(hours=1), 70000, 80000)  # outside the reseller
    await authorize(world.key, now=NOW - timedelta(minutes=30))
    assert await gateway.expire_stale(NOW - timedelta(minutes=1), MAX_AGE) == 1  # charged 11 + 22
    await authorize(world.key, now=NOW - timedelta(minutes=1))  # in flight: joins new budgets as reserved 11 + 22


async def test_a_key_budget_created_mid_period_starts_at_what_the_key_already_spent(world: World) -> None:
    await spend_before_any_budget(world)
    key_total = await set_budget(world, world.user, 10**6, key=world.key, metric=OUTPUT_TOKENS)
    key_monthly = await set_budget(world, world.user, 10**6, key=world.key, period=MONTHLY)
    key_daily = await set_budget(world, world.user, 10**6, key=world.key, metric=INPUT_TOKENS, period=DAILY)
    key_cost = await set_budget(world, world.user, 10**6, key=world.key, metric=COST, period=MONTHLY)
    other_key_total = await set_budget(world, world.user, 10**6, key=world.other_key)

    assert await counter(key_total) == (200 + 7 + 4 + 22, 22)  # every period: last month's too
    assert await counter(key_monthly) == ((5 + 7) + (3 + 4) + (11 + 22), 33)
    assert await counter(key_daily) == (3 + 11, 11)
    assert await counter(key_cost) == ((5 + 21) + (3 + 12) + (11 + 66), 0)  # it reserved no cost
    assert await counter(other_key_total) == (20 + 30, 0)
    view = await budgets.get_budget(world.admin, key_monthly.id, NOW)
    assert (view.spent, view.reserved, view.remaining) == (52, 33, 10**6 - 52 - 33)

    # Requests from now on hold and settle on top of that.
    await settle(await authorize(world.key), input_tokens=1, output_tokens=1)
    assert await counter(key_total) == (233 + 1, 22)
    assert await counter(key_monthly) == (52 + 2, 33)
    assert await counter(key_cost) == (118 + 4, 0)


async def test_an_account_budget_created_mid_period_starts_at_what_its_subtree_already_spent(world: World) -> None:
    await spend_before_any_budget(world)
    reseller_monthly = await set_budget(world, world.reseller, 10**6, period=MONTHLY)
    user_monthly = await set_budget(world, world.user, 10**6, period=MONTHLY)
    user_daily = await set_budget(world, world.user, 10**6, metric=INPUT_TOKENS, period=DAILY)
    user_cost = await set_budget(world, world.user, 10**6, metric=COST, period=MONTHLY)
    user_total = await set_budget(world, world.user, 10**6, metric=OUTPUT_TOKENS)

    this_month_user = (5 + 7) + (3 + 4) + (20 + 30) + (11 + 22)
    assert await counter(user_monthly) == (this_month_user, 33)  # the sum of the subtree, not one row's
    assert await counter(reseller_monthly) == (this_month_user + 3000, 33)
    assert await counter(user_daily) == (3 + 20 + 11, 11)
    assert await counter(user_cost) == ((5 + 21) + (3 + 12) + (20 + 90) + (11 + 66), 0)
    assert await counter(user_total) == (200 + 7 + 4 + 30 + 22, 22)
    view = await budgets.get_budget(world.admin, user_monthly.id, NOW)
    assert (view.spent, view.reserved, view.remaining) == (this_month_user, 33, 10**6 - this_month_user - 33)


async def test_a_request_in_flight_when_a_budget_is_created_joins_it(world: World) -> None:
    """It holds its reservation in the new budget, and its settle moves it like any other hold."""
    in_flight = await authorize(world.key, now=NOW - timedelta(minutes=1))
    last_month = await authorize(world.key, now=at(2029, 12, 31, 23))
    on_key = await set_budget(world, world.user, 1000, key=world.key, period=MONTHLY)
    on_user = await set_budget(world, world.user, 1000, period=MONTHLY)
    assert (await counter(on_key), await counter(on_user)) == ((0, 33), (0, 33))  # not last month's
    stored = await UsageRecord.get(id=in_flight.record.id)
    assert (
        held(stored.reserved_counters)
        == f"{on_key.id}:{period_index(MONTHLY, NOW)}:3,{on_user.id}:{period_index(MONTHLY, NOW)}:3"
    )
    await settle(in_flight, input_tokens=5, output_tokens=7)
    assert (await counter(on_key), await counter(on_user)) == ((12, 0), (12, 0))
    await settle(last_month, input_tokens=5, output_tokens=7)
    assert (await counter(on_key), await counter(on_user)) == ((12, 0), (12, 0))
    # The next request counts as usual.
    await settle(await authorize(world.key), input_tokens=5, output_tokens=7)
    assert (await counter(on_key), await counter(on_user)) == ((24, 0), (24, 0))
