"""The settles of requests admitted from a lease: each one's usage row, written closed.

Part of the one settle (:func:`claudeopus.control.ledger.settle.settle_batch`). Each row is
what authorizing and settling the request would have left (the lease's holds, the request's
reservation, the real usage at the price in force), written by one INSERT; in each of the
lease's counters the reservation is released and the real usage charged, and the reservation
leaves the lease — all in one transaction. A request whose row exists already (a repeated
settle) is left out of the answer: the caller settles it as any other. A lease that no longer
exists (the sweeper closed it) or that holds less than the request (an edge that counted
wrong) refuses the request.

Example::

    refusals = await settle_leased([Entry(request_id, data, data.leased, status, source)], now)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from claudeopus.control.domain import prices
from claudeopus.control.domain.errors import DomainError, InvalidArgument, NotFound, Reason
from claudeopus.control.domain.prices import PriceInForce
from claudeopus.control.ledger import closing, reservations, store
from claudeopus.control.ledger.leases.rows import NOTHING, LeasedReservation, check_leased, leased_row, locked_leases
from claudeopus.control.models import Account, BudgetLease, UsageSource, UsageStatus
from claudeopus.control.store.usage_rows import insert_open_records


@dataclass(frozen=True, slots=True)
class Entry:
    """The settle of one request admitted from a lease, checked: its ``usage`` and how it ended."""

    request_id: uuid.UUID
    usage: closing.Usage
    leased: LeasedReservation
    status: UsageStatus
    source: UsageSource


class _LeaseShort(Exception):
    def __init__(self, error: DomainError) -> None:
        super().__init__(error.message)
        self.error = error


async def settle_leased(entries: Sequence[Entry], now: datetime) -> dict[uuid.UUID, DomainError | None]:
    """Write each entry's row closed; per request id, None (settled) or the refusal (none: its row exists)."""
    answers: dict[uuid.UUID, DomainError | None] = {}
    checked: list[Entry] = []
    for index, entry in enumerate(entries):
        try:
            check_leased(f"requests[{index}].leased", entry.leased)
            checked.append(entry)
        except DomainError as error:
            answers[entry.request_id] = error
    if not checked:
        return answers
    try:
        answers |= await _settle_all(checked, now)
    except _LeaseShort:
        for entry in checked:  # each as a batch of its own, to tell which one the lease cannot hold
            try:
                answers |= await _settle_all([entry], now)
            except _LeaseShort as short:
                answers[entry.request_id] = short.error
    return answers


async def _settle_all(entries: Sequence[Entry], now: datetime) -> dict[uuid.UUID, DomainError | None]:
    lease_ids = sorted({uuid.UUID(entry.leased.lease_id) for entry in entries})
    async with in_transaction() as conn:
        leases = {lease.lease_id: lease for lease in await locked_leases(conn, lease_ids)}
        price_of = await _prices(conn, list(leases.values()))
        rows: list[dict[str, Any]] = []
        charges: dict[uuid.UUID, reservations.Amounts] = {}
        for entry in entries:
            lease = leases.get(uuid.UUID(entry.leased.lease_id))
            if lease is None:
                continue
            closed = closing.closing(entry.usage, entry.status, entry.source, price_of[lease.id], now)
            charges[entry.request_id] = closed.charge
            rows.append(leased_row(lease, entry.request_id, entry.leased) | closed.fields)
        settled = set(await insert_open_records(conn, rows, skip_existing=True))
        taken: dict[uuid.UUID, list[int]] = {}
        moves = reservations.Moves()
        for entry in entries:
            lease_id = uuid.UUID(entry.leased.lease_id)
            if entry.request_id not in settled:
                if lease_id not in leases and not await store.record_exists(conn, entry.request_id):
                    raise _LeaseShort(NotFound(Reason.RESERVATION_NOT_FOUND, "No live lease has this lease_id."))
                continue  # its row exists: the caller settles it as any other
            reserved = entry.leased.reserved
            lease = leases[lease_id]
            holds = reservations.decode_holds(lease.reserved_counters)
            # An unlimited lease holds nothing; a budget created since joined it: charge only.
            release = NOTHING if lease.unlimited else reserved
            moves.add(holds, release=release, charge=charges[entry.request_id])
            total = taken.setdefault(lease_id, [0, 0, 0, 0])
            total[0] += reserved.input_tokens
            total[1] += reserved.output_tokens
            total[2] += reserved.cost_micros
            total[3] += 1
        for lease_id in sorted(taken):
            input_tokens, output_tokens, cost, requests = taken[lease_id]
            lease = leases[lease_id]
            if not await store.take_from_lease(
                conn,
                lease_id=lease.id,
                unlimited=lease.unlimited,
                amounts=(input_tokens, output_tokens, cost),
                requests=requests,
            ):
                raise _LeaseShort(
                    InvalidArgument.field("leased", "reserves more than its lease holds; settle it without the lease")
                )
        await moves.apply(conn)
        await store.drop_finished_leases(conn, sorted(taken))
    return dict.fromkeys(settled)


async def _prices(conn: BaseDBAsyncClient, leases: Sequence[BudgetLease]) -> dict[int, PriceInForce]:
    """The price in force for each lease's account and model (one query per distinct pair)."""
    wanted = {lease.account_id for lease in leases}
    accounts = {account.id: account for account in await Account.filter(id__in=wanted).using_db(conn)}
    found: dict[tuple[int, str], PriceInForce] = {}
    price_of: dict[int, PriceInForce] = {}
    for lease in leases:
        place = (lease.account_id, lease.model)
        if place not in found:
            chain = accounts[place[0]].ancestor_ids()
            found[place] = prices.in_force(await prices.chain_prices(chain, lease.model))
        price_of[lease.id] = found[place]
    return price_of
