"""BatchSettle's domain side: each entry ends exactly as a single Settle would, against a real database.

The world, the budgets and the helpers are those of ``tests/support/world.py``: every authorize
reserves 11 input and 22 output tokens unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import pytest

from claudeopus.control.domain import gateway, price_changes
from claudeopus.control.domain.batch_settle import MAX_BATCH, SettleResult, settle_batch
from claudeopus.control.domain.errors import InvalidArgument, NotFound, Reason
from claudeopus.control.models import BudgetCounter, UsageRecord, UsageSource, UsageStatus
from tests.support.prices import set_price
from tests.support.world import (
    COST,
    DAILY,
    INPUT_TOKENS,
    LATER,
    MAX_AGE,
    NOW,
    OUTPUT_TOKENS,
    World,
    assert_counters_match_rows,
    authorize,
    counter,
    set_budget,
    settle_input,
)


def ok(result: SettleResult, already_settled: bool = False) -> None:
    assert result.error is None, result.error
    assert result.already_settled is already_settled


async def test_a_batch_settles_every_entry_and_moves_each_counter_by_the_sum(world: World) -> None:
    on_key = await set_budget(world, world.user, 10_000, key=world.key)
    on_user = await set_budget(world, world.user, 10_000, metric=INPUT_TOKENS)
    on_reseller = await set_budget(world, world.reseller, 10_000, metric=OUTPUT_TOKENS, period=DAILY)
    on_sibling = await set_budget(world, world.sibling, 10_000)
    mine = [await authorize(world.key) for _ in range(3)]
    sibling = await authorize(world.sibling_key)
    assert await counter(on_reseller) == (0, 4 * 22)

    usage = [(5, 7), (1, 0), (0, 22), (9, 9)]
    batch = [
        settle_input(a.record.request_id, input_tokens=i, output_tokens=o)
        for a, (i, o) in zip([*mine, sibling], usage, strict=True)
    ]
    results = await settle_batch(batch, LATER)
    assert [r.request_id for r in results] == [b.request_id for b in batch]
    for result in results:
        ok(result)
    assert await counter(on_key) == (5 + 7 + 1 + 0 + 0 + 22, 0)
    assert await counter(on_user) == (5 + 1 + 0, 0)
    assert await counter(on_reseller) == (7 + 0 + 22 + 9, 0)
    assert await counter(on_sibling) == (18, 0)
    for authorized, (i, o) in zip([*mine, sibling], usage, strict=True):
        row = await UsageRecord.get(id=authorized.record.id)
        assert (row.status, row.source, row.input_tokens, row.output_tokens) == (
            UsageStatus.SUCCEEDED,
            UsageSource.REPORTED,
            i,
            o,
        )
        assert (row.latency_us, row.http_status, row.settled_at) == (1234, 200, LATER)
    await assert_counters_match_rows()

    # A repeat changes nothing and says so, entry by entry.
    again = await settle_batch([settle_input(a.record.request_id, input_tokens=99) for a in mine], LATER)
    for result in again:
        ok(result, already_settled=True)
    assert await counter(on_key) == (35, 0)


async def test_entries_control_refuses_are_reported_alone_and_hold_no_one_back(world: World) -> None:
    budget = await set_budget(world, world.user, 10_000, key=world.key)
    first, second = await authorize(world.key), await authorize(world.key)
    settled = await authorize(world.key)
    ok((await settle_batch([settle_input(settled.record.request_id)], LATER))[0])
    batch = [
        settle_input(uuid.uuid4()),  # never authorized
        settle_input(first.record.request_id),
        settle_input("not-a-uuid"),
        settle_input(second.record.request_id, status=int(UsageStatus.RESERVED)),  # not an end
        settle_input(settled.record.request_id),  # already closed
        settle_input(first.record.request_id),  # twice in one batch
    ]
    missing, good, malformed, bad_status, repeat, twice = await settle_batch(batch, LATER)
    assert isinstance(missing.error, NotFound) and missing.error.reason is Reason.RESERVATION_NOT_FOUND
    ok(good)
    assert isinstance(malformed.error, InvalidArgument) and malformed.error.reason is Reason.FIELD_INVALID
    assert isinstance(bad_status.error, InvalidArgument)
    ok(repeat, already_settled=True)
    assert isinstance(twice.error, InvalidArgument) and "twice" in twice.error.violations[0].description
    assert (await UsageRecord.get(id=second.record.id)).status is UsageStatus.RESERVED, "refused: left open"
    assert await counter(budget) == (24, 33)
    await assert_counters_match_rows()


async def test_batched_and_single_settles_leave_the_same_rows_and_counters(world: World) -> None:
    await set_price(world.admin, "m-1", 1_500_000, 2_000_000)
    await set_price(world.admin, "m-2", 300_000, 700_000)
    await price_changes.create_price(
        world.admin,
        parent_id=world.reseller.id,
        model="m-1",
        input_micros=2_000_000,
        output_micros=2_500_000,
        request_id="",
    )
    await set_budget(world, world.reseller, 10**9, metric=COST)
    await set_budget(world, world.user, 10**9, key=world.key)
    await set_budget(world, world.direct, 10**9, metric=COST, period=DAILY)
    rng = random.Random(7)
    keys = [world.key, world.other_key, world.sibling_key, world.direct_key, world.reseller_key]
    pairs = []
    for _ in range(40):
        key = rng.choice(keys)
        model = rng.choice(["m-1", "m-2", "m-free"])
        a = await authorize(key, model=model, input_tokens=rng.randint(1, 50), max_output_tokens=rng.randint(1, 50))
        b = await authorize(key, model=model, input_tokens=a.record.estimated_input_tokens, max_output_tokens=50)
        pairs.append((a, b, rng.randint(0, 60), rng.randint(0, 60)))
    for a, _, i, o in pairs:
        await gateway.settle(settle_input(a.record.request_id, input_tokens=i, output_tokens=o), LATER)
    results = await settle_batch(
        [settle_input(b.record.request_id, input_tokens=i, output_tokens=o) for _, b, i, o in pairs], LATER
    )
    for result in results:
        ok(result)
    for a, b, _, _ in pairs:
        single, batched = await UsageRecord.get(id=a.record.id), await UsageRecord.get(id=b.record.id)
        assert (single.input_tokens, single.output_tokens, single.cost_micros, single.status) == (
            batched.input_tokens,
            batched.output_tokens,
            batched.cost_micros,
            batched.status,
        )
    assert any(row.cost_micros for row in await UsageRecord.all()), "prices were charged"
    assert all(c.reserved == 0 for c in await BudgetCounter.all())
    await assert_counters_match_rows()


async def test_a_late_batched_settle_replaces_the_sweepers_charge_once(world: World) -> None:
    tokens = await set_budget(world, world.user, 1000, key=world.key)
    stale = await authorize(world.key)
    swept_at = NOW + MAX_AGE + timedelta(seconds=1)
    assert await gateway.expire_stale(swept_at, MAX_AGE) == 1
    assert await counter(tokens) == (33, 0)
    [late] = await settle_batch([settle_input(stale.record.request_id)], swept_at)
    ok(late)
    assert await counter(tokens) == (12, 0)
    [again] = await settle_batch([settle_input(stale.record.request_id, input_tokens=500)], swept_at)
    ok(again, already_settled=True)
    assert await counter(tokens) == (12, 0)
    await assert_counters_match_rows()


async def test_an_entry_whose_holds_changed_meanwhile_is_settled_with_its_new_holds(world: World) -> None:
    in_flight = await authorize(world.key)
    # A budget created now joins the open reservation: the row's holds are no longer what was read.
    budget = await set_budget(world, world.user, 1000)
    assert await counter(budget) == (0, 33)
    [result] = await settle_batch([settle_input(in_flight.record.request_id)], LATER)
    ok(result)
    assert await counter(budget) == (12, 0)
    await assert_counters_match_rows()


async def test_absurd_usage_in_a_batch_saturates_like_a_single_settle(world: World) -> None:
    budget = await set_budget(world, world.user, 1000, key=world.key)
    requests = [await authorize(world.key) for _ in range(5)]
    huge = 2**62
    results = await settle_batch(
        [settle_input(r.record.request_id, input_tokens=huge, output_tokens=huge) for r in requests], LATER
    )
    for result in results:
        ok(result)
    spent, reserved = await counter(budget)
    assert reserved == 0 and spent == 2**62, "saturated, never overflowed"


async def test_a_batch_larger_than_the_limit_is_refused_whole(world: World) -> None:
    with pytest.raises(InvalidArgument):
        await settle_batch([settle_input(uuid.uuid4()) for _ in range(MAX_BATCH + 1)], LATER)
    assert await settle_batch([], LATER) == []


async def test_concurrent_batches_and_single_settles_of_the_same_requests_settle_each_once(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10**6)
    requests = [await authorize(rng_key) for rng_key in [world.key, world.sibling_key] * 30]
    inputs = [
        settle_input(r.record.request_id, input_tokens=n % 7, output_tokens=n % 5) for n, r in enumerate(requests)
    ]
    shuffled = random.Random(3).sample(inputs, len(inputs))

    async def single(data: gateway.SettleInput) -> None:
        await gateway.settle(data, LATER)

    await asyncio.gather(
        settle_batch(inputs[:40], LATER),
        settle_batch(list(reversed(inputs[20:])), LATER),
        settle_batch(shuffled, LATER),
        *(single(data) for data in inputs[::9]),
    )
    rows = await UsageRecord.all()
    assert all(row.status is UsageStatus.SUCCEEDED for row in rows)
    expected = sum(n % 7 + n % 5 for n in range(len(inputs)))
    assert await counter(budget) == (expected, 0)
    await assert_counters_match_rows()
