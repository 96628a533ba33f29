"""Granting a lease: a slice of every budget on a key's chain, for one model and one edge.

A lease is a whole number of requests like the one that asked for it, at most
:data:`MAX_LEASE_REQUESTS`, and at most 1/:data:`LEASE_SHARE` of what is left of each
budget it holds; when that is fewer than :data:`MIN_LEASE_REQUESTS`, there is no lease and
each request is authorized alone, exactly. A lease lives until its ttl passes
(CLAUDEOPUS_LEASE_SECONDS at the edge, at most :data:`MAX_TTL`), and never outlives the key
(its expiry, a rotated secret's grace) or a budget period it holds: it is shortened to end
before either.

Example::

    granted = await grant(key_hash=h, wanted=wanted, ttl=timedelta(seconds=1), now=now, policy=policy)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from claudeopus.control.domain.auth_cache import AuthCache, load_context
from claudeopus.control.domain.errors import InvalidArgument, ResourceExhausted
from claudeopus.control.domain.periods import period_bounds
from claudeopus.control.domain.prices import PriceInForce
from claudeopus.control.ledger import keys, reservations, store
from claudeopus.control.ledger.authorize import OutputPolicy, Wanted, reserved_amounts_of
from claudeopus.control.models import ApiKey, Budget, BudgetLease, BudgetMetric
from claudeopus.control.store.auth_epoch import current_epoch

LEASE_SHARE = 64
MIN_LEASE_REQUESTS = 2
MAX_LEASE_REQUESTS = 512
MAX_TTL = timedelta(seconds=60)
MIN_TTL = timedelta(milliseconds=50)


@dataclass(frozen=True, slots=True)
class Granted:
    """A lease as the edge gets it."""

    lease_id: uuid.UUID
    ttl: timedelta
    unlimited: bool
    amounts: reservations.Amounts
    price: PriceInForce | None  # set when a cost budget holds the key: requests are priced with it
    default_output_tokens: int
    caps_output: bool


class _NoLease(Exception):
    """Nothing was taken: the caller gets no lease (the transaction rolls back)."""


async def grant(
    *,
    key_hash: bytes,
    wanted: Wanted,
    ttl: timedelta,
    now: datetime,
    policy: OutputPolicy,
    cache: AuthCache | None = None,
) -> Granted | None:
    """A lease on the key's budgets for ``wanted.model``, sized after ``wanted``; None when none is due now.

    A key that may not serve the model is refused exactly as authorize refuses it.
    """
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidArgument.field("ttl", f"must be between {MIN_TTL.total_seconds()} and 60 seconds")
    hex_hash = keys.key_hash_hex(key_hash)
    epoch = await current_epoch()
    found = await (cache.context_at(epoch, hex_hash) if cache is not None else load_context(hex_hash))
    context = keys.usable(found, hex_hash, now)
    key = context.key
    await keys.check_served(context, wanted.model)
    ttl = min(ttl, _key_lifetime(key, hex_hash, now))
    if (policy_end := context.policy.key_end(key)) is not None:  # the longest lifetime set above
        ttl = min(ttl, policy_end - now)
    output_tokens = policy.output_tokens(wanted.model, wanted.max_output_tokens)
    default_output = policy.output_tokens(wanted.model, 0)
    planned = reservations.plan(key, context.budgets, now) if context.budgets else []
    for budget, hold in planned:
        _, end = period_bounds(budget.period, hold.period_index)
        if end is not None:
            ttl = min(ttl, end - now)
    if ttl < MIN_TTL:
        return None
    lease_id = uuid.uuid4()
    fields: dict[str, Any] = {
        "lease_id": lease_id,
        "api_key_id": key.id,
        "account_id": key.account.id,
        "model": wanted.model,
        "unlimited": not planned,
        "created_at": now,
        "expires_at": now + ttl,
    }
    if not planned:
        async with in_transaction() as conn:
            if not await _insert_lease(conn, fields, epoch):
                return None
        return Granted(lease_id, ttl, True, reservations.Amounts(0, 0, 0), None, default_output, False)
    one = await reserved_amounts_of(context, wanted, output_tokens)
    count = await _requests_that_fit(planned, one)
    if count < MIN_LEASE_REQUESTS:
        return None
    amounts = reservations.Amounts(one.input_tokens * count, one.output_tokens * count, one.cost_micros * count)
    holds = [hold for _, hold in planned]
    fields |= {
        "reserved_counters": reservations.encode_holds(holds),
        "granted_input_tokens": amounts.input_tokens,
        "granted_output_tokens": amounts.output_tokens,
        "granted_cost_micros": amounts.cost_micros,
        "open_input_tokens": amounts.input_tokens,
        "open_output_tokens": amounts.output_tokens,
        "open_cost_micros": amounts.cost_micros,
    }
    try:
        async with in_transaction() as conn:
            try:
                await reservations.take(conn, key, planned, amounts)
            except ResourceExhausted:
                raise _NoLease from None  # taken meanwhile: the next request is authorized alone
            if not await _insert_lease(conn, fields, epoch):
                raise _NoLease
    except _NoLease:
        return None
    counts_cost = any(budget.metric is BudgetMetric.COST_MICROS for budget, _ in planned)
    price = await context.price(wanted.model) if counts_cost else None
    return Granted(lease_id, ttl, False, amounts, price, default_output, True)


def _key_lifetime(key: ApiKey, hex_hash: str, now: datetime) -> timedelta:
    """How long the presented secret stays live (expiry, or a rotated secret's grace period)."""
    ends = [key.expires_at] if key.expires_at is not None else []
    if key.key_hash != hex_hash and key.previous_expires_at is not None:
        ends.append(key.previous_expires_at)
    return min((end - now for end in ends), default=MAX_TTL)


async def _requests_that_fit(planned: Sequence[tuple[Budget, reservations.Hold]], one: reservations.Amounts) -> int:
    """How many requests like ``one`` a lease may hold: a 1/LEASE_SHARE share of each budget's headroom."""
    count = MAX_LEASE_REQUESTS
    db = BudgetLease._meta.db
    for budget, hold in planned:
        amount = one.of(budget.metric)
        if amount <= 0:
            continue
        counter = await store.read_counter(db, budget_id=hold.budget_id, period_index=hold.period_index)
        used = counter[0] + counter[1] if counter is not None else 0
        headroom = budget.limit_amount - used
        count = min(count, max(0, headroom) // (LEASE_SHARE * amount))
    return count


async def _insert_lease(conn: BaseDBAsyncClient, fields: dict[str, Any], epoch: int) -> bool:
    """Insert the lease row while the auth epoch is still ``epoch`` (what the grant read is current).

    On PostgreSQL the epoch is read under a share lock: a change that commits meanwhile bumps
    the epoch at its commit, so it waits for this grant to commit first, and its lease fence
    (:mod:`~claudeopus.control.ledger.leases.fence`) then sees this lease. SQLite runs one
    writing transaction at a time, which gives the same order.
    """
    current = await store.epoch_for_grant(conn)
    if current != epoch:
        return False
    await BudgetLease.create(using_db=conn, **fields)
    return True
