"""Budget leases: a slice of a key's budgets that one edge admits requests from on its own.

Authorizing every request with control costs a round trip on the request's path. A lease
moves that off it: control takes a slice of every budget on a key's chain in one
transaction — the same conditional holds as a reservation, so the sum of what leases and
reservations hold never passes a limit, on any number of edges — and the edge then admits
requests of that key and model by counting them against the slice, until the lease's ttl
passes (CLAUDEOPUS_LEASE_SECONDS at the edge, at most :data:`MAX_TTL`). Then it returns
what it did not use (:func:`return_leases`).

A lease is a whole number of requests like the one that asked for it, at most
:data:`MAX_LEASE_REQUESTS`, and at most 1/:data:`LEASE_SHARE` of what is left of each
budget it holds; when that is fewer than :data:`MIN_LEASE_REQUESTS`, there is no lease and
each request is authorized alone, exactly. A lease never outlives the key (its expiry, a
rotated secret's grace) or a budget period it holds: it is shortened to end before either.

Each admitted request's usage row is written by its settle, closed (:func:`settle_leased`):
the request's reservation leaves the lease and, in the lease's counters, is replaced by the
real usage, exactly as authorizing and settling it would have done. So the budget counters
always equal the usage rows plus what live leases hold (``open_*``).

An edge killed while it held leases tells, once it starts again, what its lease journal
recorded (:func:`recover_leases`): each request it admitted whose settle was lost gets its
RESERVED row, expired and charged by the sweeper like any reservation nobody settled, and
what the leases still held is released. A lease nobody recovered or returned is closed by
the sweeper once the reservation timeout has passed since the lease ended
(:func:`expire_stale_leases`): what it
still holds becomes one RESERVED row, with the lease's id as its request id, which the
sweeper then expires and charges like any reservation nobody settled — the conservative
choice, as for reservations. That includes what the edge never used: at most one lease's
worth per key, model and edge (1/LEASE_SHARE of a budget's headroom, MAX_LEASE_REQUESTS).

Example::

    granted = await grant(key_hash=h, wanted=wanted, ttl=timedelta(seconds=1), now=now, policy=policy)
    await settle_leased([LeasedSettle(request_id, settle_input)], now)   # settle_input.leased set
    await return_leases([LeaseUse(lease_id, requests=3, amounts=Amounts(30, 12, 0))])
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q, Subquery
from tortoise.transactions import in_transaction

from claudeopus.control.domain import gateway, prices, reservations, validation
from claudeopus.control.domain.auth_cache import AuthCache, load_context
from claudeopus.control.domain.errors import DomainError, InvalidArgument, NotFound, Reason, ResourceExhausted
from claudeopus.control.domain.gateway import LeasedInput
from claudeopus.control.domain.periods import period_bounds
from claudeopus.control.domain.prices import PriceInForce
from claudeopus.control.models import Account, ApiKey, Budget, BudgetLease, BudgetMetric
from claudeopus.control.store.auth_epoch import current_epoch
from claudeopus.control.store.sql import Binder
from claudeopus.control.store.usage_rows import insert_open_records, open_fields

LEASE_SHARE = 64
MIN_LEASE_REQUESTS = 2
MAX_LEASE_REQUESTS = 512
MAX_TTL = timedelta(seconds=60)
MIN_TTL = timedelta(milliseconds=50)
MAX_RETURNS = 1000
MAX_LOST_REQUESTS = 10_000
EXPIRE_BATCH = 500
_log = logging.getLogger(__name__)
_NOTHING = reservations.Amounts(0, 0, 0)
_OPEN = ("open_input_tokens", "open_output_tokens", "open_cost_micros")


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


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """What an edge admitted from one lease in all, when it returns it."""

    lease_id: str
    requests: int
    amounts: reservations.Amounts


class _NoLease(Exception):
    """Nothing was taken: the caller gets no lease (the transaction rolls back)."""


async def grant(
    *,
    key_hash: bytes,
    wanted: gateway.Wanted,
    ttl: timedelta,
    now: datetime,
    policy: gateway.OutputPolicy,
    cache: AuthCache | None = None,
) -> Granted | None:
    """A lease on the key's budgets for ``wanted.model``, sized after ``wanted``; None when none is due now.

    A key that may not serve the model is refused exactly as Authorize refuses it.
    """
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidArgument.field("ttl", f"must be between {MIN_TTL.total_seconds()} and 60 seconds")
    hex_hash = gateway.key_hash_hex(key_hash)
    epoch = await current_epoch()
    found = await (cache.context_at(epoch, hex_hash) if cache is not None else load_context(hex_hash))
    context = gateway.usable(found, hex_hash, now)
    key = context.key
    await gateway.check_served(context, wanted.model)
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
    one = await gateway.reserved_amounts_of(context, wanted, output_tokens)
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
        bind = Binder(db.capabilities.dialect)
        sql = (
            "SELECT spent, reserved FROM budget_counter "  # noqa: S608 - fixed text, bound values
            f"WHERE budget_id = {bind(hold.budget_id)} AND period_index = {bind(hold.period_index)}"
        )
        rows = await db.execute_query_dict(sql, bind.values)
        used = int(rows[0]["spent"]) + int(rows[0]["reserved"]) if rows else 0
        headroom = budget.limit_amount - used
        count = min(count, max(0, headroom) // (LEASE_SHARE * amount))
    return count


async def _insert_lease(conn: BaseDBAsyncClient, fields: dict[str, Any], epoch: int) -> bool:
    """Insert the lease row while the auth epoch is still ``epoch`` (what the grant read is current).

    On PostgreSQL the epoch is read under a share lock: a change that commits meanwhile bumps
    the epoch at its commit, so it waits for this grant to commit first, and its lease fence
    (:mod:`~claudeopus.control.domain.lease_fence`) then sees this lease. SQLite runs one
    writing transaction at a time, which gives the same order.
    """
    if conn.capabilities.dialect == "postgres":
        rows = await conn.execute_query_dict("SELECT value FROM auth_epoch WHERE id = 1 FOR SHARE")
        current = int(rows[0]["value"]) if rows else -1
    else:
        current = await current_epoch(conn)
    if current != epoch:
        return False
    await BudgetLease.create(using_db=conn, **fields)
    return True


# -- refusals while leases hold part of a budget ------------------------------------------------

# A lease's edge returns it when it ends; its return reaches control within this.
RETURN_GRACE = timedelta(seconds=1)
LEASES_END_KEY = "leases_end_in_ms"
_METRIC_COLUMNS = {
    BudgetMetric.INPUT_TOKENS: ("open_input_tokens",),
    BudgetMetric.OUTPUT_TOKENS: ("open_output_tokens",),
    BudgetMetric.TOTAL_TOKENS: ("open_input_tokens", "open_output_tokens"),
    BudgetMetric.COST_MICROS: ("open_cost_micros",),
}


async def mark_held_by_leases(errors: Sequence[DomainError | None], now: datetime) -> None:
    """Tell, on each BUDGET_EXHAUSTED refusal, when the leases holding part of that budget end.

    A lease is a reservation of requests not yet made: near a limit, a slice another edge
    holds and does not use keeps budget from this request only until that lease ends and is
    returned. So the refusal says when that is (``ErrorInfo.metadata["leases_end_in_ms"]``),
    and the edge asks again then, instead of refusing a request the budget can still hold.
    """
    ends: dict[int, datetime | None] = {}
    for error in errors:
        if not isinstance(error, ResourceExhausted) or error.budget_id is None:
            continue
        if error.budget_id not in ends:
            budget = await Budget.get_or_none(id=error.budget_id)
            ends[error.budget_id] = None if budget is None else await _last_lease_end(budget, now)
        end = ends[error.budget_id]
        if end is not None:
            error.metadata[LEASES_END_KEY] = str(max(0, int((end - now) / timedelta(milliseconds=1))))


async def _last_lease_end(budget: Budget, now: datetime) -> datetime | None:
    """When the last live lease that may hold part of ``budget`` ends and is back (None: there is none)."""
    # Leases not yet returned that still hold some of the budget's metric (a returned one holds
    # only its requests in flight, which a refusal does not wait for, as without leases).
    holding = [Q(**{f"{column}__gt": 0}) for column in _METRIC_COLUMNS[budget.metric]]  # type: ignore[arg-type]
    query = BudgetLease.filter(
        Q(*holding, join_type="OR"),
        unlimited=False,
        requests_admitted__isnull=True,
        expires_at__gt=now - RETURN_GRACE,
    )
    if budget.api_key_id is not None:  # type: ignore[attr-defined]
        query = query.filter(api_key_id=budget.api_key_id)  # type: ignore[attr-defined]
    else:
        account = await Account.get(id=budget.account_id)  # type: ignore[attr-defined]
        query = query.filter(account_id__in=Subquery(Account.filter(path__startswith=account.path).values("id")))
    last = await query.order_by("-expires_at").first()
    return None if last is None else last.expires_at + RETURN_GRACE


# -- leased requests' rows -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeasedSettle:
    """The settle of a request an edge admitted from a lease (``data.leased`` is set)."""

    request_id: uuid.UUID
    data: gateway.SettleInput

    @property
    def leased(self) -> LeasedInput:
        assert self.data.leased is not None
        return self.data.leased


async def settle_leased(entries: Sequence[LeasedSettle], now: datetime) -> dict[uuid.UUID, DomainError | None]:
    """Settle leased requests by writing each one's usage row closed; per request id, None or the refusal.

    Each row is what Authorize and Settle would have left (the lease's holds, the request's
    reservation, the real usage at the price in force), written by one INSERT; in each of the
    lease's counters the reservation is released and the real usage charged, and the
    reservation leaves the lease — all in one transaction. A request whose row exists already
    (a repeated settle) is left out of the answer: the caller settles it as any other. A lease
    that no longer exists (the sweeper closed it) or that holds less than the request (an edge
    that counted wrong) refuses the request.
    """
    answers: dict[uuid.UUID, DomainError | None] = {}
    checked: list[LeasedSettle] = []
    for index, entry in enumerate(entries):
        try:
            _check_leased(f"requests[{index}].leased", entry.leased)
            checked.append(entry)
        except DomainError as error:
            answers[entry.request_id] = error
    if not checked:
        return answers
    try:
        answers |= await _settle_all(checked, now)
    except _LeaseShort:
        for entry in checked:  # one at a time, to tell which one the lease cannot hold
            try:
                answers |= await _settle_all([entry], now)
            except _LeaseShort as short:
                answers[entry.request_id] = short.error
    return answers


class _LeaseShort(Exception):
    def __init__(self, error: DomainError) -> None:
        super().__init__(error.message)
        self.error = error


def _check_leased(field: str, leased: LeasedInput) -> None:
    validation.uuid_value(f"{field}.lease_id", leased.lease_id)
    for name in ("estimated_input_tokens", "max_output_tokens", "reserved_cost_micros"):
        validation.non_negative(f"{field}.{name}", getattr(leased, name))


async def _settle_all(entries: Sequence[LeasedSettle], now: datetime) -> dict[uuid.UUID, DomainError | None]:
    lease_ids = sorted({uuid.UUID(entry.leased.lease_id) for entry in entries})
    async with in_transaction() as conn:
        leases = {lease.lease_id: lease for lease in await _locked_leases(conn, lease_ids)}
        price_of = await _prices(conn, list(leases.values()))
        rows = []
        closings: dict[uuid.UUID, gateway.Closing] = {}
        for entry in entries:
            lease = leases.get(uuid.UUID(entry.leased.lease_id))
            if lease is None:
                continue
            status, source = gateway.settle_fields(entry.data)
            closing = gateway.closing(entry.data, status, source, price_of[lease.id], now)
            closings[entry.request_id] = closing
            rows.append(_row(entry, lease) | closing.fields)
        settled = set(await insert_open_records(conn, rows, skip_existing=True))
        taken: dict[uuid.UUID, list[int]] = {}
        moves = reservations.Moves()
        for entry in entries:
            lease_id = uuid.UUID(entry.leased.lease_id)
            if entry.request_id not in settled:
                if lease_id not in leases and not await _row_exists(conn, entry.request_id):
                    raise _LeaseShort(NotFound(Reason.RESERVATION_NOT_FOUND, "No live lease has this lease_id."))
                continue  # its row exists: the caller settles it as any other
            leased = entry.leased
            reserved = reservations.Amounts(
                leased.estimated_input_tokens, leased.max_output_tokens, leased.reserved_cost_micros
            )
            lease = leases[lease_id]
            holds = reservations.decode_holds(lease.reserved_counters)
            # An unlimited lease holds nothing; a budget created since joined it: charge only.
            release = _NOTHING if lease.unlimited else reserved
            moves.add(holds, release=release, charge=closings[entry.request_id].charge)
            total = taken.setdefault(lease_id, [0, 0, 0, 0])
            total[0] += reserved.input_tokens
            total[1] += reserved.output_tokens
            total[2] += reserved.cost_micros
            total[3] += 1
        for lease_id in sorted(taken):
            if not await _take_from_lease(conn, leases[lease_id], *taken[lease_id]):
                raise _LeaseShort(
                    InvalidArgument.field("leased", "reserves more than its lease holds; settle it without the lease")
                )
        await moves.apply(conn)
        await _drop_finished(conn, sorted(taken))
    return dict.fromkeys(settled)


async def _prices(conn: BaseDBAsyncClient, leases: Sequence[BudgetLease]) -> dict[int, PriceInForce]:
    """The price in force for each lease's account and model (one query per distinct pair)."""
    wanted = {lease.account_id for lease in leases}  # type: ignore[attr-defined]
    accounts = {account.id: account for account in await Account.filter(id__in=wanted).using_db(conn)}
    found: dict[tuple[int, str], PriceInForce] = {}
    price_of: dict[int, PriceInForce] = {}
    for lease in leases:
        place = (lease.account_id, lease.model)  # type: ignore[attr-defined]
        if place not in found:
            chain = accounts[place[0]].ancestor_ids()
            found[place] = prices.in_force(await prices.chain_prices(chain, lease.model))
        price_of[lease.id] = found[place]
    return price_of


def _row(entry: LeasedSettle, lease: BudgetLease) -> dict[str, Any]:
    leased = entry.leased
    return _lease_row(
        lease,
        entry.request_id,
        reservations.Amounts(leased.estimated_input_tokens, leased.max_output_tokens, leased.reserved_cost_micros),
        stream=leased.stream,
        # Within the lease's life (an edge's clock may be off): the row lands in the period its holds are in.
        created_at=min(max(leased.reserve_time, lease.created_at), lease.expires_at),
    )


def _lease_row(
    lease: BudgetLease, request_id: uuid.UUID, reserved: reservations.Amounts, *, stream: bool, created_at: datetime
) -> dict[str, Any]:
    """A RESERVED usage row holding ``reserved`` in the lease's counters, for its key and model."""
    return open_fields(
        request_id=request_id,
        api_key_id=lease.api_key_id,  # type: ignore[attr-defined]
        account_id=lease.account_id,  # type: ignore[attr-defined]
        model=lease.model,
        estimated_input_tokens=reserved.input_tokens,
        max_output_tokens=reserved.output_tokens,
        stream=stream,
        created_at=created_at,
        reserved_cost_micros=reserved.cost_micros,
        reserved_counters=lease.reserved_counters,
    )


async def _locked_leases(conn: BaseDBAsyncClient, lease_ids: Sequence[uuid.UUID]) -> list[BudgetLease]:
    query = BudgetLease.filter(lease_id__in=lease_ids).order_by("lease_id").using_db(conn)
    if conn.capabilities.dialect == "postgres":
        query = query.select_for_update()
    return list(await query)


async def _locked_lease(conn: BaseDBAsyncClient, lease_id: uuid.UUID) -> BudgetLease | None:
    found = await _locked_leases(conn, [lease_id])
    return found[0] if found else None


async def _row_exists(conn: BaseDBAsyncClient, request_id: uuid.UUID) -> bool:
    bind = Binder(conn.capabilities.dialect)
    sql = f"SELECT 1 FROM usage_record WHERE request_id = {bind(str(request_id))}"  # noqa: S608
    return bool(await conn.execute_query_dict(sql, bind.values))


async def _take_from_lease(
    conn: BaseDBAsyncClient, lease: BudgetLease, input_tokens: int, output_tokens: int, cost: int, requests: int
) -> bool:
    """Move reservations worth these amounts out of the lease (only if it holds them); False if it does not."""
    bind = Binder(conn.capabilities.dialect)
    amounts = (0, 0, 0) if lease.unlimited else (input_tokens, output_tokens, cost)  # it holds nothing
    # Bound in the order the text has them (SQLite's placeholders are positional).
    moved = ", ".join(f"{column} = {column} - {bind(amount)}" for column, amount in zip(_OPEN, amounts, strict=True))
    opened = f"requests_opened = requests_opened + {bind(requests)}"
    which = f"id = {bind(lease.id)}"
    holds = " AND ".join(f"{column} >= {bind(amount)}" for column, amount in zip(_OPEN, amounts, strict=True))
    sql = f"UPDATE budget_lease SET {moved}, {opened} WHERE {which} AND (unlimited OR ({holds}))"  # noqa: S608
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0


async def _drop_finished(conn: BaseDBAsyncClient, lease_ids: Sequence[uuid.UUID]) -> None:
    """Delete the returned leases whose every admitted request has its row: they hold nothing more."""
    if not lease_ids:
        return
    bind = Binder(conn.capabilities.dialect)
    wanted = ", ".join(bind(str(lease_id)) for lease_id in lease_ids)
    sql = (
        f"DELETE FROM budget_lease WHERE lease_id IN ({wanted}) "  # noqa: S608 - bound values
        "AND requests_admitted IS NOT NULL AND requests_opened >= requests_admitted"
    )
    await conn.execute_query(sql, bind.values)


# -- returning and expiring leases --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LostRequest:
    """A request an edge admitted from a lease whose settle never reached control or its spool."""

    request_id: str
    reservation: LeasedInput


@dataclass(frozen=True, slots=True)
class RecoveredLease:
    """A lease a dead edge held, as its journal recorded it (see :func:`recover_leases`)."""

    lease_id: str
    lost: Sequence[LostRequest]
    release_rest: bool


async def recover_leases(recovered: Sequence[RecoveredLease]) -> int:
    """Close what a dead edge held, once it restarted: returns how many usage rows were opened.

    Each lost request gets its usage row, RESERVED, with its reservation moved out of the
    lease — so the sweeper expires it and charges what it reserved, exactly as a request
    authorized alone whose settle never came. With ``release_rest`` (the edge's journal is
    complete) what the lease still holds is then released, as a return would: every request
    it admitted has its row. Without it the lease runs to its end and the sweeper charges
    what it holds. A lease already closed by the sweeper is left alone (what it held was
    charged); a request that has its row already is left out, so recovering twice changes
    nothing.
    """
    checked = _checked_recoveries(recovered)
    opened = 0
    for lease_id, entry in checked:
        try:
            async with in_transaction() as conn:
                opened += await _recover_one(conn, lease_id, entry)
        except _NoLease:
            _log.warning("lease %s: its journal names more than it holds; the sweeper will close it", lease_id)
    return opened


def _checked_recoveries(recovered: Sequence[RecoveredLease]) -> list[tuple[uuid.UUID, RecoveredLease]]:
    if len(recovered) > MAX_RETURNS:
        raise InvalidArgument.field("leases", f"at most {MAX_RETURNS} per call")
    if sum(len(entry.lost) for entry in recovered) > MAX_LOST_REQUESTS:
        raise InvalidArgument.field("leases", f"at most {MAX_LOST_REQUESTS} lost requests per call")
    checked = []
    seen: set[uuid.UUID] = set()
    for index, entry in enumerate(recovered):
        lease_id = validation.uuid_value(f"leases[{index}].lease_id", entry.lease_id)
        for number, lost in enumerate(entry.lost):
            request_id = validation.uuid_value(f"leases[{index}].lost[{number}].request_id", lost.request_id)
            if request_id in seen:
                raise InvalidArgument.field(f"leases[{index}].lost[{number}].request_id", "is named twice")
            seen.add(request_id)
            if lost.reservation.lease_id != entry.lease_id:
                raise InvalidArgument.field(f"leases[{index}].lost[{number}]", "belongs to another lease")
            _check_leased(f"leases[{index}].lost[{number}].reservation", lost.reservation)
        checked.append((lease_id, entry))
    return sorted(checked, key=lambda pair: pair[0])


async def _recover_one(conn: BaseDBAsyncClient, lease_id: uuid.UUID, entry: RecoveredLease) -> int:
    lease = await _locked_lease(conn, lease_id)
    if lease is None:
        return 0  # closed by the sweeper: what it held was charged
    rows = []
    for lost in entry.lost:
        leased = lost.reservation
        reserved = reservations.Amounts(
            leased.estimated_input_tokens, leased.max_output_tokens, leased.reserved_cost_micros
        )
        when = min(max(leased.reserve_time, lease.created_at), lease.expires_at)
        rows.append(_lease_row(lease, uuid.UUID(lost.request_id), reserved, stream=leased.stream, created_at=when))
    opened = set(await insert_open_records(conn, rows, skip_existing=True))
    taken = [0, 0, 0]
    for lost in entry.lost:
        if uuid.UUID(lost.request_id) in opened:
            taken[0] += lost.reservation.estimated_input_tokens
            taken[1] += lost.reservation.max_output_tokens
            taken[2] += lost.reservation.reserved_cost_micros
    if opened and not await _take_from_lease(conn, lease, taken[0], taken[1], taken[2], len(opened)):
        raise _NoLease
    if lease.unlimited and lease.reserved_counters:
        # Held nowhere yet (the lease holds nothing): the rows hold their reservations in the
        # budgets created since, so the sweeper's release and charge balance.
        added = reservations.Amounts(-taken[0], -taken[1], -taken[2])
        joined = reservations.decode_holds(lease.reserved_counters)
        await reservations.move(conn, joined, release=added, charge=_NOTHING)
    if entry.release_rest and lease.requests_admitted is None:
        lease = await _locked_lease(conn, lease_id)
        assert lease is not None
        rest = reservations.Amounts(lease.open_input_tokens, lease.open_output_tokens, lease.open_cost_micros)
        await (
            BudgetLease.filter(id=lease.id)
            .using_db(conn)
            .update(
                open_input_tokens=0,
                open_output_tokens=0,
                open_cost_micros=0,
                requests_admitted=lease.requests_opened,
            )
        )
        if not lease.unlimited:
            holds = reservations.decode_holds(lease.reserved_counters)
            await reservations.move(conn, holds, release=rest, charge=reservations.Amounts(0, 0, 0))
    await _drop_finished(conn, [lease_id])
    return len(opened)


async def return_leases(uses: Sequence[LeaseUse]) -> None:
    """Release what the edge did not use of each lease; a lease returned again (or gone) is left alone."""
    if len(uses) > MAX_RETURNS:
        raise InvalidArgument.field("leases", f"at most {MAX_RETURNS} per call")
    checked: list[tuple[uuid.UUID, LeaseUse]] = []
    for index, use in enumerate(uses):
        lease_id = validation.uuid_value(f"leases[{index}].lease_id", use.lease_id)
        validation.non_negative(f"leases[{index}].requests", use.requests)
        for name in ("input_tokens", "output_tokens", "cost_micros"):
            validation.non_negative(f"leases[{index}].{name}", getattr(use.amounts, name))
        checked.append((lease_id, use))
    for lease_id, use in sorted(checked, key=lambda pair: pair[0]):
        async with in_transaction() as conn:
            lease = await _locked_lease(conn, lease_id)
            if lease is None or lease.requests_admitted is not None:
                continue
            used = use.amounts
            unused = reservations.Amounts(
                min(lease.open_input_tokens, max(0, lease.granted_input_tokens - used.input_tokens)),
                min(lease.open_output_tokens, max(0, lease.granted_output_tokens - used.output_tokens)),
                min(lease.open_cost_micros, max(0, lease.granted_cost_micros - used.cost_micros)),
            )
            await (
                BudgetLease.filter(id=lease.id)
                .using_db(conn)
                .update(
                    open_input_tokens=lease.open_input_tokens - unused.input_tokens,
                    open_output_tokens=lease.open_output_tokens - unused.output_tokens,
                    open_cost_micros=lease.open_cost_micros - unused.cost_micros,
                    requests_admitted=use.requests,
                )
            )
            if not lease.unlimited:
                holds = reservations.decode_holds(lease.reserved_counters)
                await reservations.move(conn, holds, release=unused, charge=reservations.Amounts(0, 0, 0))
            await _drop_finished(conn, [lease_id])


async def expire_stale_leases(now: datetime, max_age: timedelta, *, batch: int = EXPIRE_BATCH) -> int:
    """Close leases ended more than ``max_age`` ago: what one still holds becomes a RESERVED row for the sweeper.

    Returns how many leases were closed. Run before expiring reservations, so the rows
    made here are expired (and charged) in the same sweep.
    """
    stale = await BudgetLease.filter(expires_at__lt=now - max_age).order_by("lease_id").limit(batch)
    closed = 0
    for candidate in stale:
        async with in_transaction() as conn:
            lease = await _locked_lease(conn, candidate.lease_id)
            if lease is None:
                continue
            held = reservations.Amounts(lease.open_input_tokens, lease.open_output_tokens, lease.open_cost_micros)
            if not lease.unlimited and (held.input_tokens or held.output_tokens or held.cost_micros):
                row = _lease_row(lease, lease.lease_id, held, stream=False, created_at=lease.created_at)
                await insert_open_records(conn, [row], skip_existing=True)
            await BudgetLease.filter(id=lease.id).using_db(conn).delete()
            closed += 1
    return closed
