"""Budget leases on the control side: grant, open leased rows with their settles, return, expire.

The world, budgets and helpers are those of ``tests/support/world.py``: a request like the
one a lease is sized after reserves 11 input and 22 output tokens (33 in total), and a
settle reports 5 input and 7 output tokens. Every test ends with the invariant that
budget counters equal the usage rows plus what live leases hold.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from claudeopus import keys
from claudeopus.control.domain import (
    account_lifecycle,
    api_keys,
    batch_authorize,
    batch_settle,
    budgets,
    gateway,
    leases,
    price_changes,
    reservations,
)
from claudeopus.control.domain.api_keys import IssuedKey
from claudeopus.control.domain.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
)
from claudeopus.control.domain.leases import LEASE_SHARE, Granted, LeaseUse
from claudeopus.control.models import BudgetCounter, BudgetLease, Scope, UsageRecord, UsageSource, UsageStatus
from claudeopus.control.sweeper import ReservationSweeper
from tests.support.prices import set_price
from tests.support.world import (
    COST,
    DAILY,
    IN,
    INPUT_TOKENS,
    MAX_AGE,
    NOW,
    OUT,
    RESERVED,
    World,
    authorize,
    counter,
    expected_counters,
    fails,
    of,
    set_budget,
    settle_input,
)

POLICY = gateway.OutputPolicy(default=4096)
SECOND = timedelta(seconds=1)
ONE = reservations.Amounts(IN, OUT, 0)


async def grant(key: IssuedKey, *, now: datetime = NOW, ttl: timedelta = SECOND, model: str = "m-1") -> Granted | None:
    return await leases.grant(
        key_hash=keys.hash_secret_bytes(key.secret),
        wanted=gateway.Wanted.checked(model, IN, OUT, stream=False),
        ttl=ttl,
        now=now,
        policy=POLICY,
    )


def leased_settle(
    granted: Granted,
    *,
    request_id: str | None = None,
    cost: int = 0,
    reserve_time: datetime = NOW + timedelta(milliseconds=5),
    **changes: int,
) -> gateway.SettleInput:
    data = settle_input(request_id or uuid.uuid4(), **changes)
    leased = gateway.LeasedInput(
        lease_id=str(granted.lease_id),
        estimated_input_tokens=IN,
        max_output_tokens=OUT,
        reserved_cost_micros=cost,
        stream=True,
        reserve_time=reserve_time,
    )
    return gateway.SettleInput(**{**{f: getattr(data, f) for f in data.__slots__ if f != "leased"}, "leased": leased})


def used(requests: int, cost: int = 0) -> reservations.Amounts:
    return reservations.Amounts(IN * requests, OUT * requests, cost * requests)


async def assert_counters_match_rows_and_leases() -> None:
    """Every counter equals its usage rows plus what the live leases hold in it."""
    expected = await expected_counters()
    for lease in await BudgetLease.all():
        for hold in reservations.decode_holds(lease.reserved_counters):
            where = (hold.budget_id, hold.period_index)
            spent, reserved = expected.get(where, (0, 0))
            held = of(hold.metric, lease.open_input_tokens, lease.open_output_tokens, lease.open_cost_micros)
            expected[where] = (spent, reserved + held)
    actual = {
        (c.budget_id, c.period_index): (c.spent, c.reserved)  # type: ignore[attr-defined]
        for c in await BudgetCounter.all()
        if (c.spent, c.reserved) != (0, 0)
    }
    assert actual == {where: value for where, value in expected.items() if value != (0, 0)}


# -- granting ------------------------------------------------------------------------------


async def test_a_lease_is_a_share_of_every_budget_on_the_chain_in_whole_requests(world: World) -> None:
    on_key = await set_budget(world, world.user, 10 * LEASE_SHARE * RESERVED + 5, key=world.key)
    on_reseller = await set_budget(world, world.reseller, 40 * LEASE_SHARE * IN, metric=INPUT_TOKENS)
    granted = await grant(world.key)
    assert granted is not None and not granted.unlimited
    assert granted.amounts == used(10), "the key's budget allows 10 requests' worth, the reseller's 40"
    assert (granted.ttl, granted.price, granted.default_output_tokens, granted.caps_output) == (
        SECOND,
        None,
        4096,
        True,
    )
    assert await counter(on_key) == (0, 10 * RESERVED)
    assert await counter(on_reseller) == (0, 10 * IN)
    await assert_counters_match_rows_and_leases()


async def test_near_a_limit_there_is_no_lease_and_nothing_is_held(world: World) -> None:
    budget = await set_budget(world, world.reseller, 2 * LEASE_SHARE * RESERVED - 1)
    assert await grant(world.key) is None, "fewer than two requests' worth in a 1/64 share"
    assert await counter(budget) == (0, 0)
    first = await authorize(world.key)  # each request is authorized on its own instead
    assert first.record.status is UsageStatus.RESERVED


async def test_a_key_without_budgets_gets_a_lease_that_counts_nothing(world: World) -> None:
    granted = await grant(world.direct_key)
    assert granted is not None and granted.unlimited and not granted.caps_output
    assert granted.amounts == reservations.Amounts(0, 0, 0)
    lease = await BudgetLease.get(lease_id=granted.lease_id)
    assert (lease.unlimited, lease.reserved_counters, lease.model) == (True, "", "m-1")


async def test_a_cost_budget_prices_the_lease_and_hands_the_edge_the_price(world: World) -> None:
    await set_price(world.admin, "m-1", 2_000_000, 3_000_000)
    one_cost = IN * 2 + OUT * 3
    budget = await set_budget(world, world.reseller, 4 * LEASE_SHARE * one_cost, metric=COST)
    granted = await grant(world.key)
    assert granted is not None and granted.price is not None
    assert (granted.price.input_micros_per_million, granted.price.output_micros_per_million) == (2_000_000, 3_000_000)
    assert granted.amounts == used(4, one_cost)
    assert await counter(budget) == (0, 4 * one_cost)


async def test_a_key_that_may_not_serve_is_refused_as_authorize_refuses_it(world: World) -> None:
    await api_keys.revoke_api_key(world.admin, world.other_key.key.id, now=NOW)
    await fails(Unauthenticated, Reason.KEY_REVOKED, grant(world.other_key))
    scoped = await api_keys.create_api_key(
        world.admin,
        account=world.user,
        display_name="scoped",
        scopes=[Scope.INFERENCE],
        allowed_models=["m-2"],
        expires_at=None,
        request_id="",
        now=NOW,
    )
    await fails(PermissionDenied, Reason.MODEL_NOT_ALLOWED, grant(scoped))
    with pytest.raises(InvalidArgument):
        await grant(world.key, ttl=timedelta(minutes=5))


async def test_a_lease_ends_before_the_key_expires_and_before_its_budget_period_does(world: World) -> None:
    expiring = await api_keys.create_api_key(
        world.admin,
        account=world.user,
        display_name="expiring",
        scopes=[Scope.INFERENCE],
        allowed_models=[],
        expires_at=NOW + timedelta(milliseconds=400),
        request_id="",
        now=NOW,
    )
    granted = await grant(expiring, ttl=5 * SECOND)
    assert granted is not None and granted.ttl == timedelta(milliseconds=400)
    await set_budget(world, world.reseller, 1_000_000, metric=INPUT_TOKENS, period=DAILY)
    before_midnight = datetime(2030, 1, 2, 23, 59, 59, 700_000, tzinfo=UTC)
    granted = await grant(world.key, now=before_midnight, ttl=5 * SECOND)
    assert granted is not None and granted.ttl == timedelta(milliseconds=300)
    assert await grant(world.key, now=before_midnight + timedelta(milliseconds=280)) is None


async def test_taking_a_keys_rights_away_returns_once_its_leases_have_ended(world: World) -> None:
    ttl = timedelta(milliseconds=300)
    assert await grant(world.key, ttl=ttl) is not None
    started = time.monotonic()
    await api_keys.revoke_api_key(world.admin, world.key.key.id, now=NOW)
    assert time.monotonic() - started >= 0.25, "no edge admits for the key once revoke returns"
    await fails(Unauthenticated, Reason.KEY_REVOKED, grant(world.key))
    started = time.monotonic()
    await api_keys.revoke_api_key(world.admin, world.other_key.key.id, now=NOW)
    assert time.monotonic() - started < 0.2, "no lease, no wait"

    assert await grant(world.sibling_key, ttl=ttl) is not None
    started = time.monotonic()
    await account_lifecycle.suspend_account(world.admin, world.reseller.id, now=NOW)
    assert time.monotonic() - started >= 0.25, "a suspension waits for the leases of the whole subtree"
    await fails(PermissionDenied, Reason.ACCOUNT_SUSPENDED, grant(world.sibling_key))


async def test_a_new_budget_holds_on_every_edge_once_created_even_over_a_lease_that_counts_nothing(
    world: World,
) -> None:
    granted = await grant(world.direct_key, ttl=timedelta(milliseconds=300))
    assert granted is not None and granted.unlimited
    before = leased_settle(granted)
    await batch_settle.settle_one(before, NOW + SECOND)  # 12 tokens, before any budget
    started = time.monotonic()
    budget = await set_budget(world, world.direct, 1_000, key=world.direct_key)
    assert time.monotonic() - started >= 0.25, "no edge admits unchecked for the key once create returns"
    assert await counter(budget) == (12, 0), "what was spent already"
    after = [leased_settle(granted) for _ in range(2)]  # admitted before the create returned
    await batch_settle.settle_batch(after, NOW + SECOND)
    assert await counter(budget) == (36, 0), "charged to the new budget, nothing released it never held"
    lost_one = lost(granted)
    await leases.recover_leases([leases.RecoveredLease(str(granted.lease_id), [lost_one], True)])
    assert await counter(budget) == (36, RESERVED), "a lost request holds its reservation in the new budget"
    late = NOW + SECOND + MAX_AGE + SECOND
    assert await gateway.expire_stale(late, MAX_AGE) == 1
    assert await counter(budget) == (36 + RESERVED, 0)
    await assert_counters_match_rows_and_leases()
    started = time.monotonic()
    await set_budget(world, world.direct, 1_000, key=world.direct_key, metric=INPUT_TOKENS)
    assert time.monotonic() - started < 0.2, "no such lease live: no wait"


async def test_lowering_a_limit_or_changing_a_price_returns_once_leases_on_the_old_terms_ended(world: World) -> None:
    ttl = timedelta(milliseconds=300)
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    assert await grant(world.key, ttl=ttl) is not None
    started = time.monotonic()
    await budgets.update_budget(world.admin, budget.id, paths=["limit"], limit=20 * LEASE_SHARE * RESERVED, now=NOW)
    assert time.monotonic() - started < 0.2, "a raised limit takes nothing away: no wait"
    await budgets.update_budget(world.admin, budget.id, paths=["limit"], limit=5 * LEASE_SHARE * RESERVED, now=NOW)
    assert time.monotonic() - started >= 0.25, "a lowered limit holds on every edge once update returns"

    assert await grant(world.key, ttl=ttl, now=NOW + SECOND) is not None
    started = time.monotonic()
    price = await set_price(world.admin, "m-2", 1, 1, now=NOW + SECOND)
    assert time.monotonic() - started < 0.2, "another model's price: no wait"
    await price_changes.update_price(
        world.admin, price.id, paths=["input_micros_per_million"], input_micros=2, output_micros=0, now=NOW + SECOND
    )
    assert time.monotonic() - started < 0.2
    await set_price(world.admin, "m-1", 1, 1, now=NOW + SECOND)
    assert time.monotonic() - started >= 0.25, "no edge reserves at the old price of m-1 once create returns"


async def test_a_refusal_while_leases_hold_the_rest_says_when_they_end(world: World) -> None:
    budget = await set_budget(world, world.reseller, 2 * LEASE_SHARE * RESERVED)
    granted = await grant(world.sibling_key)  # another key of the reseller: another edge, say
    assert granted is not None and granted.amounts == used(2)

    async def ask(now: datetime) -> batch_authorize.AuthorizeResult:
        one = batch_authorize.AuthorizeInput(
            str(uuid.uuid4()), keys.hash_secret_bytes(world.key.secret), "m-1", IN, OUT, stream=False
        )
        (result,) = await batch_authorize.authorize_batch([one], now, POLICY)
        return result

    for _ in range(2 * LEASE_SHARE - 2):
        assert (await ask(NOW)).error is None
    refused = await ask(NOW)
    assert isinstance(refused.error, ResourceExhausted)
    assert refused.error.metadata[leases.LEASES_END_KEY] == "2000", "the lease ends in 1 s, and is back 1 s later"
    await leases.return_leases([LeaseUse(str(granted.lease_id), 0, used(0))])
    for _ in range(2):
        assert (await ask(NOW)).error is None, "what the lease did not use holds requests once it is back"
    refused = await ask(NOW)
    assert isinstance(refused.error, ResourceExhausted)
    assert leases.LEASES_END_KEY not in refused.error.metadata, "no lease holds any of it: a plain refusal"
    assert await counter(budget) == (0, 2 * LEASE_SHARE * RESERVED)


# -- leased requests -------------------------------------------------------------------------


async def test_each_leased_settle_opens_its_row_from_the_lease_then_settles_it(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None and granted.amounts == used(10)
    batch = [leased_settle(granted) for _ in range(3)]
    results = await batch_settle.settle_batch(batch, NOW + SECOND)
    assert [(r.error, r.already_settled) for r in results] == [(None, False)] * 3
    rows = await UsageRecord.filter(request_id__in=[b.request_id for b in batch]).order_by("id")
    assert [(r.status, r.source, r.input_tokens, r.output_tokens) for r in rows] == [
        (UsageStatus.SUCCEEDED, UsageSource.REPORTED, 5, 7)
    ] * 3
    assert {(r.estimated_input_tokens, r.max_output_tokens, r.model, r.stream) for r in rows} == {
        (IN, OUT, "m-1", True)
    }
    assert {r.created_at for r in rows} == {NOW + timedelta(milliseconds=5)}, "authorized when the edge admitted it"
    assert await counter(budget) == (3 * 12, 7 * RESERVED), "spent the real usage; the lease holds the other 7"
    lease = await BudgetLease.get(lease_id=granted.lease_id)
    assert (lease.open_input_tokens, lease.open_output_tokens, lease.requests_opened) == (7 * IN, 7 * OUT, 3)
    await assert_counters_match_rows_and_leases()

    again = await batch_settle.settle_batch(batch[:1], NOW + 2 * SECOND)
    assert again[0].already_settled and again[0].error is None
    assert await counter(budget) == (3 * 12, 7 * RESERVED), "a repeated settle changes nothing"

    await leases.return_leases([LeaseUse(str(granted.lease_id), 3, used(3))])
    assert await counter(budget) == (3 * 12, 0), "what was not used is released"
    assert not await BudgetLease.exists(lease_id=granted.lease_id), "every admitted request has its row"
    await leases.return_leases([LeaseUse(str(granted.lease_id), 3, used(3))])  # a second return: nothing
    assert await counter(budget) == (3 * 12, 0)
    await assert_counters_match_rows_and_leases()


async def test_a_lease_returned_before_its_requests_settle_holds_just_them(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    await leases.return_leases([LeaseUse(str(granted.lease_id), 2, used(2))])
    assert await counter(budget) == (0, 2 * RESERVED)
    await assert_counters_match_rows_and_leases()
    first, second = leased_settle(granted), leased_settle(granted)
    await batch_settle.settle_one(first, NOW + SECOND)
    assert await BudgetLease.exists(lease_id=granted.lease_id)
    await batch_settle.settle_one(second, NOW + SECOND)
    assert not await BudgetLease.exists(lease_id=granted.lease_id)
    assert await counter(budget) == (24, 0)
    await assert_counters_match_rows_and_leases()


async def test_a_leased_row_is_dated_within_its_lease_whatever_the_edges_clock(world: World) -> None:
    granted = await grant(world.direct_key)
    assert granted is not None
    early = leased_settle(granted, reserve_time=NOW - timedelta(days=2))
    late = leased_settle(granted, reserve_time=NOW + timedelta(days=2))
    await batch_settle.settle_batch([early, late], NOW + SECOND)
    rows = await UsageRecord.filter(request_id__in=[early.request_id, late.request_id]).order_by("created_at")
    assert [r.created_at for r in rows] == [NOW, NOW + SECOND], "the lease's start and end"


async def test_a_settle_the_lease_cannot_hold_or_of_an_unknown_lease_is_refused_alone(world: World) -> None:
    budget = await set_budget(world, world.reseller, 2 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None and granted.amounts == used(2)
    missing = Granted(uuid.uuid4(), SECOND, False, used(2), None, 4096, True)
    batch = [leased_settle(granted), leased_settle(granted), leased_settle(granted), leased_settle(missing)]
    results = await batch_settle.settle_batch(batch, NOW + SECOND)
    assert [r.error is None for r in results] == [True, True, False, False]
    assert isinstance(results[2].error, InvalidArgument), "a third request's worth was never leased"
    assert isinstance(results[3].error, NotFound) and results[3].error.reason is Reason.RESERVATION_NOT_FOUND
    assert await counter(budget) == (24, 0)
    await assert_counters_match_rows_and_leases()


async def test_an_unlimited_lease_opens_rows_that_hold_nothing(world: World) -> None:
    granted = await grant(world.direct_key)
    assert granted is not None
    results = await batch_settle.settle_batch([leased_settle(granted) for _ in range(4)], NOW + SECOND)
    assert all(r.error is None for r in results)
    rows = await UsageRecord.filter(api_key_id=world.direct_key.key.id)
    assert len(rows) == 4 and {r.reserved_counters for r in rows} == {""}
    await leases.return_leases([LeaseUse(str(granted.lease_id), 4, reservations.Amounts(0, 0, 0))])
    assert not await BudgetLease.exists(lease_id=granted.lease_id)


async def test_a_budget_created_while_a_lease_lives_holds_what_the_lease_holds(world: World) -> None:
    above = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None and granted.amounts == used(10)
    first = leased_settle(granted)
    await batch_settle.settle_one(first, NOW + SECOND)
    started = time.monotonic()
    on_key = await set_budget(world, world.user, 1_000_000, key=world.key, metric=INPUT_TOKENS)
    assert time.monotonic() - started >= 0.9, "returns once the lease, sized before the budget, has ended"
    assert await counter(on_key) == (5, 9 * IN), "what was settled, and what the lease still holds"
    await batch_settle.settle_batch([leased_settle(granted) for _ in range(2)], NOW + SECOND)
    assert await counter(on_key) == (15, 7 * IN), "requests admitted from the lease count in it"
    await leases.return_leases([LeaseUse(str(granted.lease_id), 3, used(3))])
    assert await counter(on_key) == (15, 0) and await counter(above) == (36, 0)
    await assert_counters_match_rows_and_leases()


# -- an edge that never came back ------------------------------------------------------------


async def test_a_lease_never_returned_is_charged_like_a_reservation_nobody_settled(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    await batch_settle.settle_one(leased_settle(granted), NOW + SECOND)
    late = NOW + SECOND + MAX_AGE + SECOND  # the lease ended at NOW + 1 s
    assert await leases.expire_stale_leases(NOW + MAX_AGE - SECOND, MAX_AGE) == 0, "not stale yet"
    assert await leases.expire_stale_leases(late, MAX_AGE) == 1
    assert not await BudgetLease.exists(lease_id=granted.lease_id)
    assert await gateway.expire_stale(late, MAX_AGE) == 1
    remainder = await UsageRecord.get(request_id=granted.lease_id)
    assert (remainder.status, remainder.input_tokens, remainder.output_tokens) == (UsageStatus.EXPIRED, 9 * IN, 9 * OUT)
    assert await counter(budget) == (12 + 9 * RESERVED, 0), "conservative: everything it still held is charged"
    await assert_counters_match_rows_and_leases()
    refused = await batch_settle.settle_batch([leased_settle(granted)], late)
    assert isinstance(refused[0].error, NotFound), "a settle after that stays inside the charged remainder"


async def test_the_sweeper_closes_stale_leases_before_it_expires_reservations(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    assert await grant(world.key) is not None
    sweeper = ReservationSweeper(timeout=MAX_AGE, interval=60, clock=lambda: NOW + MAX_AGE + 2 * SECOND)
    assert await sweeper.sweep_once() == 1
    assert await counter(budget) == (10 * RESERVED, 0)
    await assert_counters_match_rows_and_leases()


# -- an edge that restarted: its lease journal ------------------------------------------------


def lost(granted: Granted, reserve_time: datetime = NOW + timedelta(milliseconds=5)) -> leases.LostRequest:
    data = leased_settle(granted, reserve_time=reserve_time)
    assert data.leased is not None
    return leases.LostRequest(str(uuid.uuid4()), data.leased)


async def test_a_restarted_edge_gives_each_lost_request_its_row_and_releases_the_rest(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None and granted.amounts == used(10)
    await batch_settle.settle_one(leased_settle(granted), NOW + SECOND)  # settled before the kill
    gone = [lost(granted), lost(granted)]
    recovered = leases.RecoveredLease(str(granted.lease_id), gone, release_rest=True)
    assert await leases.recover_leases([recovered]) == 2
    assert not await BudgetLease.exists(lease_id=granted.lease_id), "every admitted request has its row"
    assert await counter(budget) == (12, 2 * RESERVED), "the lost two hold their reservations; the rest is free"
    await assert_counters_match_rows_and_leases()
    assert await leases.recover_leases([recovered]) == 0, "recovering twice changes nothing"
    late = NOW + SECOND + MAX_AGE + SECOND
    assert await gateway.expire_stale(late, MAX_AGE) == 2
    rows = await UsageRecord.filter(request_id__in=[g.request_id for g in gone])
    assert {(r.status, r.input_tokens, r.output_tokens) for r in rows} == {(UsageStatus.EXPIRED, IN, OUT)}
    assert {r.stream for r in rows} == {True}
    assert await counter(budget) == (12 + 2 * RESERVED, 0), "each lost request charged what it reserved"
    await assert_counters_match_rows_and_leases()


async def test_a_lost_request_that_has_its_row_already_is_left_alone(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    settled = leased_settle(granted)  # control took it; the edge was killed before it heard so
    await batch_settle.settle_one(settled, NOW + SECOND)
    assert settled.leased is not None
    again = leases.LostRequest(str(settled.request_id), settled.leased)
    assert await leases.recover_leases([leases.RecoveredLease(str(granted.lease_id), [again], True)]) == 0
    assert await counter(budget) == (12, 0) and not await BudgetLease.exists(lease_id=granted.lease_id)
    await assert_counters_match_rows_and_leases()


async def test_a_lease_returned_before_the_kill_gets_rows_for_its_unsettled_requests(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    await leases.return_leases([LeaseUse(str(granted.lease_id), 2, used(2))])
    gone = [lost(granted), lost(granted)]
    assert await leases.recover_leases([leases.RecoveredLease(str(granted.lease_id), gone, True)]) == 2
    assert not await BudgetLease.exists(lease_id=granted.lease_id)
    assert await counter(budget) == (0, 2 * RESERVED)
    await assert_counters_match_rows_and_leases()


async def test_a_journal_from_before_a_reboot_leaves_the_rest_to_the_sweeper(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    recovered = leases.RecoveredLease(str(granted.lease_id), [lost(granted)], release_rest=False)
    assert await leases.recover_leases([recovered]) == 1
    assert await counter(budget) == (0, 10 * RESERVED), "the journal may miss admissions: nothing released"
    await assert_counters_match_rows_and_leases()
    late = NOW + SECOND + MAX_AGE + SECOND
    assert await leases.expire_stale_leases(late, MAX_AGE) == 1
    assert await gateway.expire_stale(late, MAX_AGE) == 2, "the lost request's row and the lease's remainder"
    assert await counter(budget) == (10 * RESERVED, 0)
    await assert_counters_match_rows_and_leases()


async def test_recovering_a_lease_the_sweeper_closed_changes_nothing(world: World) -> None:
    budget = await set_budget(world, world.reseller, 10 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None
    late = NOW + SECOND + MAX_AGE + SECOND
    await leases.expire_stale_leases(late, MAX_AGE)
    await gateway.expire_stale(late, MAX_AGE)
    assert await leases.recover_leases([leases.RecoveredLease(str(granted.lease_id), [lost(granted)], True)]) == 0
    assert await counter(budget) == (10 * RESERVED, 0)
    await assert_counters_match_rows_and_leases()


async def test_a_journal_naming_more_than_its_lease_holds_is_left_to_the_sweeper(world: World) -> None:
    budget = await set_budget(world, world.reseller, 2 * LEASE_SHARE * RESERVED)
    granted = await grant(world.key)
    assert granted is not None and granted.amounts == used(2)
    too_many = [lost(granted) for _ in range(3)]
    assert await leases.recover_leases([leases.RecoveredLease(str(granted.lease_id), too_many, True)]) == 0
    assert await BudgetLease.exists(lease_id=granted.lease_id) and await counter(budget) == (0, 2 * RESERVED)
    await assert_counters_match_rows_and_leases()


async def test_recovery_refuses_malformed_input(world: World) -> None:
    granted = await grant(world.direct_key)
    assert granted is not None
    one = lost(granted)
    twice = leases.RecoveredLease(str(granted.lease_id), [one, one], True)
    with pytest.raises(InvalidArgument, match="named twice"):
        await leases.recover_leases([twice])
    other = leases.RecoveredLease(str(uuid.uuid4()), [one], True)
    with pytest.raises(InvalidArgument, match="another lease"):
        await leases.recover_leases([other])
    with pytest.raises(InvalidArgument, match="UUID"):
        await leases.recover_leases([leases.RecoveredLease("nope", [], True)])
    many = [leases.RecoveredLease(str(uuid.uuid4()), [], True)] * (leases.MAX_RETURNS + 1)
    with pytest.raises(InvalidArgument, match="at most"):
        await leases.recover_leases(many)


# -- concurrency -------------------------------------------------------------------------------


async def test_leases_and_authorizes_at_once_never_hold_more_than_the_limit(world: World) -> None:
    limit = 6 * LEASE_SHARE * RESERVED
    budget = await set_budget(world, world.reseller, limit)
    keys_ = [world.key, world.other_key, world.sibling_key]

    async def one(index: int) -> object:
        try:
            if index % 2:
                return await grant(keys_[index % 3])
            return await authorize(keys_[index % 3])
        except Exception as error:
            return error

    outcomes = await asyncio.gather(*(one(i) for i in range(60)))
    spent, reserved = await counter(budget)
    assert spent + reserved <= limit
    granted = [o for o in outcomes if isinstance(o, Granted)]
    authorized = [o for o in outcomes if isinstance(o, gateway.Authorized)]
    assert granted and authorized
    assert (
        reserved == sum(g.amounts.input_tokens + g.amounts.output_tokens for g in granted) + len(authorized) * RESERVED
    )
    await assert_counters_match_rows_and_leases()
