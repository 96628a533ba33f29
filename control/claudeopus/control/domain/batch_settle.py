"""Settling many reservations at once: what the edge's settler sends in one BatchSettle.

Each entry ends exactly as :func:`claudeopus.control.domain.gateway.settle` would end it
(same validation, cost, counters and idempotency by request id); the batch only shares the
work. It costs one query for the rows, one for the prices, and one transaction in which
every row is closed by one statement and every budget counter the batch touches moves
once, by the sum of its requests (:class:`~claudeopus.control.domain.reservations.Moves`).
Rows are closed in id order and counters in the one global lock order, so batches cannot
deadlock each other. An entry whose row changed under it (a budget created meanwhile
joined its reservation, the sweeper expired it) is settled again on its own afterwards.

Example::

    results = await settle_batch([SettleInput(...), SettleInput(...)], now)
    for result in results:
        print(result.error.reason if result.error else result.already_settled)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import OperationalError, TransactionManagementError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import gateway, leases, prices, reservations, validation
from claudeopus.control.domain.errors import DomainError, InvalidArgument, NotFound, Reason
from claudeopus.control.models import Price, UsageRecord, UsageSource, UsageStatus, ids_on_path
from claudeopus.control.store.sql import Binder
from claudeopus.control.store.sql import db_value as _db_value

MAX_BATCH = 1000
_OPEN = (UsageStatus.RESERVED, UsageStatus.EXPIRED)


@dataclass(frozen=True, slots=True)
class SettleResult:
    """One entry's end: settled now, found ``already_settled``, or refused with ``error``."""

    request_id: str
    already_settled: bool = False
    error: DomainError | None = None


@dataclass(slots=True)
class _Closing:
    """An entry whose open row this batch closes."""

    index: int
    data: gateway.SettleInput
    record: UsageRecord
    closed: gateway.Closing


async def settle_batch(batch: Sequence[gateway.SettleInput], now: datetime) -> list[SettleResult]:
    """Settle every entry of ``batch``; one result per entry, in order. Idempotent by request id."""
    if len(batch) > MAX_BATCH:
        raise InvalidArgument.field("requests", f"at most {MAX_BATCH} settles per batch")
    results: list[SettleResult | None] = [None] * len(batch)
    wanted: dict[uuid.UUID, int] = {}
    ends: dict[int, tuple[UsageStatus, UsageSource]] = {}
    for index, data in enumerate(batch):
        try:
            rid = validation.uuid_value(f"requests[{index}].request_id", data.request_id)
            ends[index] = gateway.settle_fields(data)
        except DomainError as error:
            results[index] = SettleResult(data.request_id, error=error)
            continue
        if rid in wanted:
            results[index] = SettleResult(
                data.request_id,
                error=InvalidArgument.field(f"requests[{index}].request_id", "appears twice in this batch"),
            )
            continue
        wanted[rid] = index
    leased = [leases.LeasedSettle(rid, batch[index]) for rid, index in wanted.items() if batch[index].leased]
    if leased:
        # Settled here with their rows; those whose row exists already go on as any other settle.
        for rid, refusal in (await leases.settle_leased(leased, now)).items():
            index = wanted.pop(rid)
            results[index] = SettleResult(batch[index].request_id, error=refusal)
    found, chains = await _read_records(list(wanted))
    open_records: list[tuple[int, UsageRecord]] = []
    for rid, index in wanted.items():
        record = found.get(rid)
        if record is None:
            missing = NotFound(Reason.RESERVATION_NOT_FOUND, "No authorized request has this request_id.")
            results[index] = SettleResult(batch[index].request_id, error=missing)
        elif record.status not in _OPEN:
            results[index] = SettleResult(batch[index].request_id, already_settled=True)
        else:
            open_records.append((index, record))
    if open_records:
        price_of = await _prices([record for _, record in open_records], chains)
        closing = [
            _Closing(
                index,
                batch[index],
                record,
                gateway.closing(batch[index], *ends[index], price_of[(chains[record.id], record.model)], now),
            )
            for index, record in open_records
        ]
        for entry in await _close_all(closing):
            # Its row changed since it was read: the single settle reads it again and retries.
            try:
                settlement = await gateway.settle(entry.data, now)
                results[entry.index] = SettleResult(entry.data.request_id, settlement.already_settled)
            except DomainError as error:
                results[entry.index] = SettleResult(entry.data.request_id, error=error)
    return [result or SettleResult(batch[index].request_id) for index, result in enumerate(results)]


async def settle_one(data: gateway.SettleInput, now: datetime) -> gateway.Settlement:
    """One settle (GatewayService.Settle); a leased request's row is written closed."""
    if data.leased is not None:
        rid = validation.uuid_value("request_id", data.request_id)
        gateway.settle_fields(data)
        answers = await leases.settle_leased([leases.LeasedSettle(rid, data)], now)
        if rid in answers:
            refusal = answers[rid]
            if refusal is not None:
                raise refusal
            return gateway.Settlement(record=await UsageRecord.get(request_id=rid), already_settled=False)
    return await gateway.settle(data, now)


_PriceKey = tuple[tuple[int, ...], str]


async def _read_records(
    request_ids: Sequence[uuid.UUID],
) -> tuple[dict[uuid.UUID, UsageRecord], dict[int, tuple[int, ...]]]:
    """The usage rows of ``request_ids`` and, per row id, its account's chain (root first): one query."""
    if not request_ids:
        return {}, {}
    db = UsageRecord._meta.db
    bind = Binder(db.capabilities.dialect)
    wanted = ", ".join(bind(str(rid)) for rid in request_ids)
    sql = (
        "SELECT usage_record.*, account.path AS account_path FROM usage_record "  # noqa: S608 - bound values
        f"JOIN account ON account.id = usage_record.account_id WHERE usage_record.request_id IN ({wanted})"
    )
    records: dict[uuid.UUID, UsageRecord] = {}
    chains: dict[int, tuple[int, ...]] = {}
    for row in await db.execute_query_dict(sql, bind.values):
        path = row.pop("account_path")
        record = UsageRecord._init_from_db(**row)
        records[record.request_id] = record
        chains[record.id] = tuple(ids_on_path(path))
    return records, chains


async def _prices(
    records: Sequence[UsageRecord], chains: dict[int, tuple[int, ...]]
) -> dict[_PriceKey, prices.PriceInForce]:
    """The price in force for each (account chain, model) of ``records``: one query for the batch."""
    accounts = sorted({account_id for record in records for account_id in chains[record.id]})
    models = sorted({record.model for record in records})
    db = Price._meta.db
    bind = Binder(db.capabilities.dialect)
    sql = (
        "SELECT account_id, model, input_micros_per_million, output_micros_per_million FROM price "  # noqa: S608
        f"WHERE account_id IN ({', '.join(bind(a) for a in accounts)}) "
        f"AND model IN ({', '.join(bind(m) for m in models)})"
    )
    by_place: dict[tuple[int, str], list[Price]] = {}
    for row in await db.execute_query_dict(sql, bind.values):
        price = Price(**row)
        by_place.setdefault((int(row["account_id"]), row["model"]), []).append(price)
    price_of: dict[_PriceKey, prices.PriceInForce] = {}
    for record in records:
        key = (chains[record.id], record.model)
        if key not in price_of:
            sources = [row for account_id in key[0] for row in by_place.get((account_id, record.model), [])]
            price_of[key] = prices.in_force(sources)
    return price_of


async def _close_all(closing: list[_Closing]) -> list[_Closing]:
    """Close the rows and move their counters in one transaction; the entries that must be retried alone."""
    closing.sort(key=lambda entry: entry.record.id)
    try:
        async with in_transaction() as conn:
            missed: list[_Closing] = []
            moves = reservations.Moves()
            for entry in closing:
                if not await _close_row(conn, entry):
                    missed.append(entry)
                    continue
                release, charge = gateway.counter_moves(entry.record, entry.closed.charge)
                moves.add(reservations.decode_holds(entry.record.reserved_counters), release=release, charge=charge)
            await moves.apply(conn)
    except (OperationalError, TransactionManagementError):
        # A lock conflict (PostgreSQL chose this batch as a deadlock victim, SQLite was busy):
        # nothing of the transaction stayed; every entry is settled on its own instead.
        return closing
    return missed


async def _close_row(conn: BaseDBAsyncClient, entry: _Closing) -> bool:
    """Close the row if it is still as read (same state, same holds); False if someone else changed it."""
    bind = Binder(conn.capabilities.dialect)
    assignments = ", ".join(f"{column} = {bind(_db_value(value))}" for column, value in entry.closed.fields.items())
    record = entry.record
    sql = (
        f"UPDATE usage_record SET {assignments} "  # noqa: S608 - fixed column names, bound values
        f"WHERE id = {bind(record.id)} AND status = {bind(int(record.status))} "
        f"AND reserved_counters = {bind(record.reserved_counters)}"
    )
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0
