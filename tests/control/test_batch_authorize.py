"""BatchAuthorize's domain side: each entry is decided exactly as a single Authorize would, in order.

The world, the budgets and the helpers are those of ``tests/support/world.py``: every authorize
reserves 11 input and 22 output tokens (33 in total) unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from claudeopus import keys
from claudeopus.control.domain import api_keys, batch_authorize, gateway
from claudeopus.control.domain.api_keys import IssuedKey
from claudeopus.control.domain.auth_cache import AuthCache
from claudeopus.control.domain.batch_authorize import MAX_BATCH, AuthorizeInput, AuthorizeResult, authorize_batch
from claudeopus.control.domain.errors import (
    DomainError,
    InvalidArgument,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
)
from claudeopus.control.models import UsageRecord, UsageSource, UsageStatus
from tests.support.prices import set_price
from tests.support.world import (
    COST,
    DAILY,
    IN,
    INPUT_TOKENS,
    NOW,
    OUT,
    OUTPUT_TOKENS,
    RESERVED,
    World,
    assert_counters_match_rows,
    authorize,
    counter,
    set_budget,
    settle,
)

POLICY = gateway.OutputPolicy(default=4096)


def entry(
    key: IssuedKey | str,
    *,
    input_tokens: int = IN,
    max_output_tokens: int = OUT,
    model: str = "m-1",
    request_id: str | None = None,
    choices: int = 0,
) -> AuthorizeInput:
    secret = key if isinstance(key, str) else key.secret
    return AuthorizeInput(
        request_id=request_id or str(uuid.uuid4()),
        key_hash=keys.hash_secret_bytes(secret),
        model=model,
        estimated_input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        stream=False,
        choices=choices,
    )


async def batch(entries: list[AuthorizeInput], cache: AuthCache | None = None) -> list[AuthorizeResult]:
    results = await authorize_batch(entries, NOW, POLICY, cache)
    assert [r.request_id for r in results] == [e.request_id for e in entries]
    for result in results:
        assert (result.authorized is None) != (result.error is None), result
    return results


def admitted(results: list[AuthorizeResult]) -> list[gateway.Authorized]:
    return [r.authorized for r in results if r.authorized is not None]


def refused(result: AuthorizeResult, error: type[DomainError], reason: Reason) -> DomainError:
    assert type(result.error) is error, result
    assert result.error.reason is reason, result.error
    return result.error


async def test_a_batch_holds_in_order_what_fits_and_opens_one_row_per_admitted_entry(world: World) -> None:
    on_key = await set_budget(world, world.user, 10_000, key=world.key)
    on_user = await set_budget(world, world.user, 3 * IN, metric=INPUT_TOKENS)
    on_reseller = await set_budget(world, world.reseller, 10_000, metric=OUTPUT_TOKENS, period=DAILY)
    entries = [
        entry(world.key),
        entry(world.sibling_key, max_output_tokens=100),
        entry(world.other_key),
        entry(world.direct_key),  # no budget anywhere above it
        entry(world.key),
        entry(world.other_key),  # the user's input budget is full by now: 3 of the user's fit
        entry(world.sibling_key),  # not the user's: still fits
        entry(world.key, input_tokens=0),  # fits the input budget still
    ]
    results = await batch(entries)
    assert [r.error is None for r in results] == [True, True, True, True, True, False, True, True]
    error = refused(results[5], ResourceExhausted, Reason.BUDGET_EXHAUSTED)
    assert error.metadata == {
        "budget_scope": "account",
        "metric": "INPUT_TOKENS",
        "period": "TOTAL",
        "budget": f"budgets/{on_user.id}",
    }

    assert await counter(on_key) == (0, 2 * IN + 3 * OUT)
    assert await counter(on_user) == (0, 3 * IN)
    assert await counter(on_reseller) == (0, 5 * OUT + 100)
    caps = [r.authorized.enforced_output_tokens if r.authorized else None for r in results]
    assert caps == [OUT, 100, OUT, 0, OUT, None, OUT, OUT], "the cap goes upstream only under a budget"
    rows = {row.request_id: row for row in await UsageRecord.all()}
    assert set(rows) == {uuid.UUID(r.request_id) for r in results if r.authorized}
    for result in results:
        if result.authorized is None:
            continue
        row = rows[uuid.UUID(result.request_id)]
        assert (row.status, row.source, row.input_tokens, row.output_tokens) == (
            UsageStatus.RESERVED,
            UsageSource.NONE,
            0,
            0,
        )
        assert (row.api_key_id, row.created_at) == (result.authorized.record.api_key_id, NOW)  # type: ignore[attr-defined]
        assert row.reserved_counters == result.authorized.record.reserved_counters
    await assert_counters_match_rows()

    # Settled like any other reservation.
    first = admitted(results)[0]
    await settle(first)
    assert await counter(on_key) == (12, IN + 2 * OUT)
    await assert_counters_match_rows()


async def test_the_rows_are_those_single_authorizes_would_open(world: World) -> None:
    await set_budget(world, world.reseller, 10_000)
    await set_budget(world, world.user, 10_000, key=world.key, metric=OUTPUT_TOKENS)
    single = await authorize(world.key, max_output_tokens=0, policy=POLICY)
    [batched, _] = admitted(await batch([entry(world.key, max_output_tokens=0), entry(world.direct_key)]))
    fields = ("api_key_id", "account_id", "model", "estimated_input_tokens", "max_output_tokens", "stream")
    a = await UsageRecord.get(request_id=single.record.request_id)
    b = await UsageRecord.get(request_id=batched.record.request_id)
    assert [getattr(a, f) for f in fields if f != "stream"] == [getattr(b, f) for f in fields if f != "stream"]
    assert (a.reserved_counters, a.reserved_cost_micros) == (b.reserved_counters, b.reserved_cost_micros)
    assert batched.enforced_output_tokens == single.enforced_output_tokens == 4096
    await assert_counters_match_rows()


async def test_output_is_reserved_for_every_choice_and_the_cap_stays_per_choice(world: World) -> None:
    budget = await set_budget(world, world.user, 100_000, key=world.key, metric=OUTPUT_TOKENS)
    entries = [
        entry(world.key, max_output_tokens=100, choices=4),
        entry(world.key, max_output_tokens=0, choices=3),  # the model's default, per choice
        entry(world.key, max_output_tokens=100, choices=0),  # 0: one choice
    ]
    results = await batch(entries)
    caps = [r.authorized.enforced_output_tokens if r.authorized else None for r in results]
    assert caps == [100, 4096, 100]
    rows = [await UsageRecord.get(request_id=a.record.request_id) for a in admitted(results)]
    assert [row.max_output_tokens for row in rows] == [400, 3 * 4096, 100]
    assert await counter(budget) == (0, 400 + 3 * 4096 + 100)
    [over] = await batch([entry(world.key, max_output_tokens=1000, choices=100)])  # one choice would fit
    refused(over, ResourceExhausted, Reason.BUDGET_EXHAUSTED)
    single = await authorize_batch([entry(world.key, max_output_tokens=7, choices=5)], NOW, POLICY)
    assert single[0].authorized is not None and single[0].authorized.enforced_output_tokens == 7
    assert (await UsageRecord.get(request_id=single[0].request_id)).max_output_tokens == 35
    [too_many] = await batch([entry(world.key, choices=gateway.MAX_CHOICES + 1)])
    error = refused(too_many, InvalidArgument, Reason.FIELD_INVALID)
    assert [v.field for v in error.violations] == ["choices"]  # type: ignore[attr-defined]
    await assert_counters_match_rows()


async def test_each_refusal_is_the_single_calls_and_holds_the_others_back_in_nothing(world: World) -> None:
    world.key.key.allowed_models = ["m-1"]
    await world.key.key.save()
    await api_keys.revoke_api_key(world.admin, world.other_key.key.id, NOW - timedelta(seconds=1))
    budget = await set_budget(world, world.reseller, 10_000)
    taken = str(uuid.uuid4())
    entries = [
        entry(world.key, model="m-2"),
        entry(world.other_key),
        entry("sk-co-" + "A" * 43),
        AuthorizeInput(str(uuid.uuid4()), b"short", "m-1", 1, 1, False),
        entry(world.key, request_id="not-a-uuid"),
        entry(world.key, input_tokens=-1),
        entry(world.key, request_id=taken),
        entry(world.sibling_key, request_id=taken),
        entry(world.key),
    ]
    results = await batch(entries)
    refused(results[0], PermissionDenied, Reason.MODEL_NOT_ALLOWED)
    refused(results[1], Unauthenticated, Reason.KEY_REVOKED)
    refused(results[2], Unauthenticated, Reason.KEY_INVALID)
    for index, field in ((3, "key_hash"), (4, "request_id"), (5, "estimated_input_tokens"), (7, "request_id")):
        error = refused(results[index], InvalidArgument, Reason.FIELD_INVALID)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == [field]
    assert [r.authorized is not None for r in results] == [False] * 6 + [True, False, True]
    assert await counter(budget) == (0, 2 * RESERVED)
    assert await UsageRecord.all().count() == 2
    await assert_counters_match_rows()


async def test_a_cost_budget_holds_the_worst_case_at_the_price_in_force(world: World) -> None:
    await set_price(world.admin, "m-1", 2_000_000, 3_000_000)
    budget = await set_budget(world, world.reseller, 3 * (IN * 2 + OUT * 3), metric=COST)
    results = await batch([entry(world.key), entry(world.sibling_key), entry(world.other_key), entry(world.key)])
    assert [r.authorized is not None for r in results] == [True, True, True, False]
    assert [a.record.reserved_cost_micros for a in admitted(results)] == [IN * 2 + OUT * 3] * 3
    assert await counter(budget) == (0, 3 * (IN * 2 + OUT * 3))
    await assert_counters_match_rows()


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
async def test_a_change_committed_after_the_batch_read_its_keys_sends_every_entry_alone(
    world: World, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    """The epoch moved between the checks and the write: the batch writes nothing, each entry starts over."""
    budget = await set_budget(world, world.user, 3 * RESERVED)
    cache = AuthCache() if cached else None
    real_epoch = batch_authorize.current_epoch
    reads = 0

    async def stale_epoch(conn: object = None) -> int:
        nonlocal reads
        reads += 1
        return await real_epoch(conn) - (1 if reads == 1 else 0)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_authorize, "current_epoch", stale_epoch)
    results = await batch([entry(world.key) for _ in range(5)], cache)
    assert [r.authorized is not None for r in results] == [True, True, True, False, False]
    assert await counter(budget) == (0, 3 * RESERVED), "nothing held twice"
    assert await UsageRecord.all().count() == 3
    await assert_counters_match_rows()


async def test_a_request_id_already_authorized_is_answered_as_before_and_holds_nothing_twice(world: World) -> None:
    budget = await set_budget(world, world.user, 10_000)
    first = await authorize(world.key)
    results = await batch([entry(world.key), entry(world.key, request_id=str(first.record.request_id))])
    [_, again] = admitted(results)
    assert again.record.id == first.record.id
    assert await counter(budget) == (0, 2 * RESERVED)
    await assert_counters_match_rows()


async def test_concurrent_batches_and_single_authorizes_take_exactly_what_the_budget_admits(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = 0
    single = batch_authorize._alone

    async def counted(*args: object) -> AuthorizeResult:
        nonlocal alone
        alone += 1
        return await single(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_authorize, "_alone", counted)
    on_reseller = await set_budget(world, world.reseller, 23 * RESERVED)
    on_key = await set_budget(world, world.user, 15 * RESERVED, key=world.key)
    keys_ = (world.key, world.sibling_key, world.other_key) * 4
    batches = [batch([entry(k) for k in keys_]) for _ in range(5)]
    singles = [authorize(world.sibling_key) for _ in range(10)]
    outcomes = await asyncio.gather(*batches, *singles, return_exceptions=True)
    results = [r for group in outcomes[:5] for r in group]  # type: ignore[union-attr]
    single_ok = [o for o in outcomes[5:] if isinstance(o, gateway.Authorized)]
    assert all(isinstance(o, gateway.Authorized | ResourceExhausted) for o in outcomes[5:]), outcomes[5:]
    assert all(r.error is None or r.error.reason is Reason.BUDGET_EXHAUSTED for r in results)
    assert len(admitted(results)) + len(single_ok) == 23
    assert await counter(on_reseller) == (0, 23 * RESERVED)
    mine = sum(a.record.api_key_id == world.key.key.id for a in admitted(results))  # type: ignore[attr-defined]
    assert await counter(on_key) == (0, mine * RESERVED) and mine <= 15
    assert await UsageRecord.all().count() == 23
    assert alone == 0, "the batches waited for each other's locks instead of starting over"
    await assert_counters_match_rows()


async def test_a_cached_key_revoked_since_is_refused_by_the_next_batch(world: World) -> None:
    cache = AuthCache()
    assert len(admitted(await batch([entry(world.key), entry(world.other_key)], cache))) == 2
    await api_keys.revoke_api_key(world.admin, world.key.key.id, NOW - timedelta(seconds=1))
    results = await batch([entry(world.key), entry(world.other_key)], cache)
    refused(results[0], Unauthenticated, Reason.KEY_REVOKED)
    assert results[1].authorized is not None


async def test_a_batch_above_the_limit_is_refused_whole(world: World) -> None:
    with pytest.raises(InvalidArgument):
        await authorize_batch([entry(world.key)] * (MAX_BATCH + 1), NOW, POLICY)
    assert await UsageRecord.all().count() == 0
    assert await authorize_batch([], NOW, POLICY) == []
