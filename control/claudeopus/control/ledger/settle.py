"""Settling requests: what the edge's settler sends in one BatchSettle (a single settle is a batch of one).

Each entry closes its request's usage row with the real usage and its cost at the price in
force for the row's account and model; the row and every budget counter it holds move in one
transaction (:func:`~claudeopus.control.ledger.closing.close_records`), so the counters always
equal the sum of the rows. Idempotent by request id: an entry whose row is already closed
changes nothing and reports ``already_settled``. A settle that arrives after the sweeper
expired the reservation replaces the expired charge by the real one, once.

A request the edge admitted from a lease (``leased`` set) has no row yet: its settle writes
it closed (:mod:`~claudeopus.control.ledger.leases.settle`); if its row exists already (a
repeated settle, a recovered lease), it is settled as any other.

A batch costs one query for its rows, one for their prices, and one transaction. An entry
whose row changed under it (a budget created meanwhile joined its reservation, the sweeper
expired it) is settled again as a batch of its own, up to :data:`ATTEMPTS` times.

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

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import DomainError, InvalidArgument, NotFound, Reason
from claudeopus.control.ledger import closing, store
from claudeopus.control.ledger.leases import settle as leased
from claudeopus.control.ledger.leases.rows import LeasedReservation
from claudeopus.control.models import UsageRecord, UsageSource, UsageStatus
from claudeopus.gateway_limits import MAX_SETTLES_PER_CALL

# How often an entry whose row keeps changing under it is closed again before it is taken as settled.
ATTEMPTS = 3
SETTLED_STATES = (UsageStatus.SUCCEEDED, UsageStatus.UPSTREAM_ERROR, UsageStatus.CLIENT_DISCONNECTED)
_OPEN = (UsageStatus.RESERVED, UsageStatus.EXPIRED)


@dataclass(frozen=True, slots=True)
class SettleInput:
    """One settle: the request's real usage and how it ended."""

    request_id: str
    input_tokens: int
    output_tokens: int
    latency_us: int
    status: int
    source: int
    http_status: int
    # Set for a request admitted from a lease: its settle writes its row.
    leased: LeasedReservation | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    """One entry's end: settled now, found ``already_settled``, or refused with ``error``."""

    request_id: str
    already_settled: bool = False
    error: DomainError | None = None


async def settle_batch(batch: Sequence[SettleInput], now: datetime) -> list[SettleResult]:
    """Settle every entry of ``batch``; one result per entry, in order. Idempotent by request id."""
    if len(batch) > MAX_SETTLES_PER_CALL:
        raise InvalidArgument.field("requests", f"at most {MAX_SETTLES_PER_CALL} settles per batch")
    results: list[SettleResult | None] = [None] * len(batch)
    wanted: dict[uuid.UUID, int] = {}
    ends: dict[int, tuple[UsageStatus, UsageSource]] = {}
    for index, data in enumerate(batch):
        try:
            rid = validation.uuid_value(f"requests[{index}].request_id", data.request_id)
            ends[index] = settle_fields(data)
        except DomainError as error:
            results[index] = SettleResult(data.request_id, error=error)
            continue
        if rid in wanted:
            twice = InvalidArgument.field(f"requests[{index}].request_id", "appears twice in this batch")
            results[index] = SettleResult(data.request_id, error=twice)
            continue
        wanted[rid] = index
    leased_entries = [
        leased.Entry(rid, data, data.leased, *ends[index])
        for rid, index in wanted.items()
        if (data := batch[index]).leased is not None
    ]
    if leased_entries:
        # Settled here with their rows; those whose row exists already go on as any other settle.
        for rid, refusal in (await leased.settle_leased(leased_entries, now)).items():
            index = wanted.pop(rid)
            results[index] = SettleResult(batch[index].request_id, error=refusal)
    missed = await _close(batch, wanted, ends, results, now)
    for rid, index in missed.items():
        for _ in range(ATTEMPTS):
            if not await _close(batch, {rid: index}, ends, results, now, retried=True):
                break
        else:
            results[index] = SettleResult(batch[index].request_id, already_settled=True)
    return [result or SettleResult(batch[index].request_id) for index, result in enumerate(results)]


async def _close(
    batch: Sequence[SettleInput],
    wanted: dict[uuid.UUID, int],
    ends: dict[int, tuple[UsageStatus, UsageSource]],
    results: list[SettleResult | None],
    now: datetime,
    *,
    retried: bool = False,
) -> dict[uuid.UUID, int]:
    """Close the open rows of ``wanted`` (request id to entry), answering in ``results``; the entries missed."""
    found, chains = await store.records_with_chains(UsageRecord._meta.db, list(wanted))
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
    if not open_records:
        return {}
    price_of = await closing.prices_of([record for _, record in open_records], chains)
    closings: list[closing.Closing] = []
    index_of: dict[int, int] = {}
    for index, record in open_records:
        price = price_of[(chains[record.id], record.model)]
        closed = closing.closing(batch[index], *ends[index], price, now)
        closings.append(closing.Closing(record, closed.fields, closed.charge))
        index_of[record.id] = index
    left = await closing.close_records(closings, raise_conflicts=retried)
    missed = {entry.record.request_id: index_of[entry.record.id] for entry in left}
    for index, record in open_records:
        if record.request_id not in missed:
            results[index] = SettleResult(batch[index].request_id)
    return missed


def settle_fields(data: SettleInput) -> tuple[UsageStatus, UsageSource]:
    """The checked end of a settle: how the request ended and where its counts come from."""
    for field in ("input_tokens", "output_tokens", "latency_us", "http_status"):
        validation.non_negative(field, getattr(data, field))
    try:
        status = UsageStatus(data.status)
    except ValueError:
        status = UsageStatus.RESERVED
    if status not in SETTLED_STATES:
        raise InvalidArgument.field("status", "must be SUCCEEDED, UPSTREAM_ERROR or CLIENT_DISCONNECTED")
    try:
        source = UsageSource(data.source)
    except ValueError:
        source = UsageSource.NONE
    if source not in (UsageSource.REPORTED, UsageSource.ESTIMATED):
        raise InvalidArgument.field("source", "must be USAGE_SOURCE_REPORTED or USAGE_SOURCE_ESTIMATED")
    return status, source
