"""The authorize cache: every change to what Authorize reads is seen by the very next request.

Against a real database (SQLite or PostgreSQL): the epoch triggers, and authorizes through
shared caches (two of them, as two control replicas would have) around revocations,
suspensions, rotations, budgets and prices. The world and helpers are those of
``tests/support/world.py``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from claudeopus import keys
from claudeopus.control.domain import account_lifecycle, api_key_rotation, api_keys, budgets, gateway, price_changes
from claudeopus.control.domain.auth_cache import AuthCache
from claudeopus.control.domain.errors import PermissionDenied, Reason, Unauthenticated
from claudeopus.control.models import Account, ApiKey, Budget, BudgetCounter, Price, Session, UsageRecord
from claudeopus.control.store.auth_epoch import current_epoch
from tests.support.prices import set_price
from tests.support.world import (
    COST,
    NOW,
    World,
    counter,
    exhausted,
    fails,
    set_budget,
)


@pytest.fixture
def replicas() -> tuple[AuthCache, AuthCache]:
    return AuthCache(), AuthCache()


async def authorize_with(
    cache: AuthCache, secret: str, *, model: str = "m-1", now: object = NOW, input_tokens: int = 11
) -> gateway.Authorized:
    return await gateway.authorize(
        request_id=str(uuid.uuid4()),
        key_hash=keys.hash_secret_bytes(secret),
        model=model,
        estimated_input_tokens=input_tokens,
        max_output_tokens=22,
        stream=False,
        now=now,  # type: ignore[arg-type]
        policy=gateway.OutputPolicy(),
        cache=cache,
    )


async def test_the_epoch_moves_with_every_change_authorize_reads_and_with_nothing_else(world: World) -> None:
    before = await current_epoch()
    assert before >= 0
    connection = Account._meta.db
    for statement in (
        f"UPDATE account SET display_name = 'x' WHERE id = {world.user.id}",
        f"UPDATE api_key SET display_name = 'x' WHERE id = {world.key.key.id}",
    ):
        await connection.execute_script(statement)  # as an administrator's SQL would: the triggers see it too
        after = await current_epoch()
        assert after > before, statement
        before = after
    budget = await set_budget(world, world.user, 1000)
    assert await current_epoch() > before
    before = await current_epoch()
    await Price.create(account_id=world.user.id, model="m-9", input_micros_per_million=1, output_micros_per_million=1)
    assert await current_epoch() > before
    before = await current_epoch()
    await Budget.filter(id=budget.id).delete()
    assert await current_epoch() > before

    # The hot path's own writes (usage rows, counters) and sessions leave it alone.
    before = await current_epoch()
    await gateway.authorize(
        request_id=str(uuid.uuid4()),
        key_hash=keys.hash_secret_bytes(world.key.secret),
        model="m-1",
        estimated_input_tokens=1,
        max_output_tokens=1,
        stream=False,
        now=NOW,
        policy=gateway.OutputPolicy(),
    )
    await BudgetCounter.all().update(spent=0)
    await UsageRecord.all().update(latency_us=1)
    await Session.filter(id=-1).delete()
    assert await current_epoch() == before


async def test_an_unchanged_key_is_read_once(world: World) -> None:
    cache = AuthCache()
    hashed = keys.hash_secret(world.key.secret)
    first = await cache.context(hashed)
    assert first is not None and await cache.context(hashed) is first
    await authorize_with(cache, world.key.secret)
    assert await cache.context(hashed) is first, "an authorize writes nothing authorize reads"
    assert await cache.context("0" * 64) is None and len(cache) == 1, "unknown hashes are not kept"


async def test_a_revoked_key_is_refused_by_every_replica_at_once(
    world: World, replicas: tuple[AuthCache, AuthCache]
) -> None:
    for cache in replicas:
        await authorize_with(cache, world.key.secret)
    await api_keys.revoke_api_key(world.admin, world.key.key.id, NOW)
    for cache in replicas:
        await fails(Unauthenticated, Reason.KEY_REVOKED, authorize_with(cache, world.key.secret))


async def test_a_suspension_above_refuses_at_once_and_a_resume_admits_again(
    world: World, replicas: tuple[AuthCache, AuthCache]
) -> None:
    for cache in replicas:
        await authorize_with(cache, world.key.secret)
    await account_lifecycle.suspend_account(world.admin, world.reseller.id, NOW)
    for cache in replicas:
        await fails(PermissionDenied, Reason.ACCOUNT_SUSPENDED, authorize_with(cache, world.key.secret))
    await account_lifecycle.resume_account(world.admin, world.reseller.id, NOW)
    for cache in replicas:
        await authorize_with(cache, world.key.secret)


async def test_a_deleted_account_and_a_narrowed_key_are_seen_at_once(world: World) -> None:
    cache = AuthCache()
    await authorize_with(cache, world.direct_key.secret)
    await ApiKey.filter(id=world.direct_key.key.id).update(allowed_models=["m-2"])
    await fails(PermissionDenied, Reason.MODEL_NOT_ALLOWED, authorize_with(cache, world.direct_key.secret))
    await authorize_with(cache, world.direct_key.secret, model="m-2")
    await Account.filter(id=world.direct.id).update(deleted_at=NOW)
    await fails(Unauthenticated, Reason.KEY_INVALID, authorize_with(cache, world.direct_key.secret, model="m-2"))


async def test_time_is_checked_per_request_not_cached(world: World) -> None:
    cache = AuthCache()
    await ApiKey.filter(id=world.key.key.id).update(expires_at=NOW + timedelta(hours=1))
    await authorize_with(cache, world.key.secret, now=NOW)
    await fails(
        Unauthenticated, Reason.KEY_EXPIRED, authorize_with(cache, world.key.secret, now=NOW + timedelta(hours=1))
    )

    rotated = await api_key_rotation.rotate_api_key(
        world.admin, world.other_key.key.id, grace=timedelta(minutes=5), now=NOW
    )
    await authorize_with(cache, world.other_key.secret, now=NOW + timedelta(minutes=4))
    await authorize_with(cache, rotated.secret, now=NOW + timedelta(minutes=4))
    await fails(
        Unauthenticated,
        Reason.KEY_ROTATED,
        authorize_with(cache, world.other_key.secret, now=NOW + timedelta(minutes=5)),
    )


async def test_budgets_created_changed_and_removed_hold_the_next_request(
    world: World, replicas: tuple[AuthCache, AuthCache]
) -> None:
    first, second = replicas
    await authorize_with(first, world.key.secret)
    budget = await set_budget(world, world.reseller, 33 * 3)
    assert await counter(budget) == (0, 33), "the request in flight joined it"
    await authorize_with(second, world.key.secret)
    await authorize_with(first, world.key.secret)
    assert await counter(budget) == (0, 99)
    await exhausted(authorize_with(second, world.key.secret))
    await budgets.update_budget(world.admin, budget.id, paths=["limit"], limit=33 * 4, now=NOW)
    await authorize_with(first, world.key.secret)
    await exhausted(authorize_with(second, world.key.secret))
    await budgets.delete_budget(world.admin, budget.id)
    await authorize_with(first, world.key.secret)
    await authorize_with(second, world.key.secret)


async def test_a_cost_budget_reserves_at_the_price_in_force_now(world: World) -> None:
    cache = AuthCache()
    budget = await set_budget(world, world.reseller, 10**9, metric=COST)
    price = await set_price(world.admin, "m-1", 1_000_000, 1_000_000)
    first = await authorize_with(cache, world.key.secret)
    assert first.record.reserved_cost_micros == 33
    await price_changes.update_price(
        world.admin, price.id, paths=["input_micros_per_million"], input_micros=3_000_000, output_micros=0, now=NOW
    )
    second = await authorize_with(cache, world.key.secret)
    assert second.record.reserved_cost_micros == 33 + 22
    await price_changes.delete_price(world.admin, price.id)
    # Without a price the model is not served any more: the cache does not keep serving it.
    with pytest.raises(PermissionDenied) as refused:
        await authorize_with(cache, world.key.secret)
    assert refused.value.reason is Reason.MODEL_NOT_AVAILABLE
    assert await counter(budget) == (0, 33 + 55)


async def test_the_cache_keeps_at_most_its_size(world: World) -> None:
    cache = AuthCache(max_keys=2)
    for issued in (world.key, world.other_key, world.sibling_key, world.direct_key):
        await authorize_with(cache, issued.secret)
    assert len(cache) == 2
    off = AuthCache(max_keys=0)
    await authorize_with(off, world.key.secret)
    assert len(off) == 0
