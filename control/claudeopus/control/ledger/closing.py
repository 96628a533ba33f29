"""Closing usage rows: what a settle (or the sweeper's expiry) writes, and the one way it is written.

A closing is the row's final columns and the amounts it is charged. :func:`close_records`
writes many in one transaction: each row only if it is still as it was read (same state, same
holds: a budget created meanwhile may have joined its reservation), and every budget counter
the rows hold moves once, by the sum of what they release and charge, in the one global lock
order — so the counters always equal the sum of the rows.

Example::

    closed = closing(data, status, source, price, now)
    missed = await close_records([Closing(record, closed.fields, closed.charge)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tortoise.exceptions import OperationalError, TransactionManagementError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import prices
from claudeopus.control.ledger import reservations, store
from claudeopus.control.ledger.authorize import capped_cost
from claudeopus.control.models import Price, UsageRecord, UsageSource, UsageStatus


class Usage(Protocol):
    """What a settle reports of one request."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def latency_us(self) -> int: ...
    @property
    def http_status(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Closing:
    """How ``record`` is closed: the ``fields`` written and the real amounts ``charge``d."""

    record: UsageRecord
    fields: dict[str, Any]
    charge: reservations.Amounts


@dataclass(frozen=True, slots=True)
class Closed:
    """The columns a settle writes and the amounts it charges (before a row is chosen)."""

    fields: dict[str, Any]
    charge: reservations.Amounts


def closing(data: Usage, status: UsageStatus, source: UsageSource, price: prices.PriceInForce, now: datetime) -> Closed:
    charge = reservations.Amounts(
        data.input_tokens, data.output_tokens, capped_cost(data.input_tokens, data.output_tokens, price)
    )
    fields: dict[str, Any] = {
        "input_tokens": charge.input_tokens,
        "output_tokens": charge.output_tokens,
        "latency_us": data.latency_us,
        "status": status,
        "source": source,
        "http_status": data.http_status,
        "settled_at": now,
        "cost_micros": charge.cost_micros,
    }
    return Closed(fields, charge)


def reserved_amounts(record: UsageRecord) -> reservations.Amounts:
    return reservations.Amounts(record.estimated_input_tokens, record.max_output_tokens, record.reserved_cost_micros)


def counter_moves(
    record: UsageRecord, charge: reservations.Amounts
) -> tuple[reservations.Amounts, reservations.Amounts]:
    """What closing ``record`` at ``charge`` moves in each counter it holds: (release, charge)."""
    if record.status is UsageStatus.EXPIRED:
        # The sweeper charged the reservation; a late settle replaces that charge by the real one.
        delta = reservations.Amounts(
            charge.input_tokens - record.input_tokens,
            charge.output_tokens - record.output_tokens,
            charge.cost_micros - record.cost_micros,
        )
        return reservations.Amounts(0, 0, 0), delta
    return reserved_amounts(record), charge


async def close_records(closings: Sequence[Closing], *, raise_conflicts: bool = False) -> list[Closing]:
    """Close the rows and move their counters in one transaction; the closings that missed their row.

    A row someone else changed since it was read is missed (the caller reads it again). When
    the transaction itself fails on a lock conflict (PostgreSQL chose it as a deadlock victim,
    SQLite was busy), nothing stayed and every closing is missed, to be retried; with
    ``raise_conflicts`` (a retry, the sweeper) the conflict is raised instead.
    """
    ordered = sorted(closings, key=lambda entry: entry.record.id)
    try:
        async with in_transaction() as conn:
            missed: list[Closing] = []
            moves = reservations.Moves()
            for entry in ordered:
                if not await store.close_record(conn, entry.record, entry.fields):
                    missed.append(entry)
                    continue
                release, charge = counter_moves(entry.record, entry.charge)
                moves.add(reservations.decode_holds(entry.record.reserved_counters), release=release, charge=charge)
            await moves.apply(conn)
    except (OperationalError, TransactionManagementError):
        if raise_conflicts:
            raise
        return ordered
    return missed


PriceKey = tuple[tuple[int, ...], str]


async def prices_of(
    records: Sequence[UsageRecord], chains: dict[int, tuple[int, ...]]
) -> dict[PriceKey, prices.PriceInForce]:
    """The price in force for each (account chain, model) of ``records``: one query for them all."""
    accounts = sorted({account_id for record in records for account_id in chains[record.id]})
    models = sorted({record.model for record in records})
    by_place = await store.prices_on(Price._meta.db, accounts, models)
    price_of: dict[PriceKey, prices.PriceInForce] = {}
    for record in records:
        key = (chains[record.id], record.model)
        if key not in price_of:
            sources = [row for account_id in key[0] for row in by_place.get((account_id, record.model), [])]
            price_of[key] = prices.in_force(sources)
    return price_of
