"""Recovering the leases of an edge killed while it held them, once it starts again.

The edge tells what its lease journal recorded: each request it admitted whose settle was
lost gets its RESERVED row, expired and charged by the sweeper like any reservation nobody
settled, and what the leases still held is released when the journal is complete.

Example::

    opened = await recover_leases([RecoveredLease(lease_id, lost=[LostRequest(rid, leased)], release_rest=True)])
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import InvalidArgument
from claudeopus.control.ledger import reservations, store
from claudeopus.control.ledger.leases.rows import NOTHING, LeasedReservation, check_leased, leased_row, locked_lease
from claudeopus.control.models import BudgetLease
from claudeopus.control.store.usage_rows import insert_open_records
from claudeopus.gateway_limits import MAX_LEASES_PER_CALL, MAX_LOST_REQUESTS_PER_CALL

_log = logging.getLogger(__name__)


class _NoLease(Exception):
    """The journal names more than the lease holds: nothing of this lease's recovery stays."""


@dataclass(frozen=True, slots=True)
class LostRequest:
    """A request an edge admitted from a lease whose settle never reached control or its spool."""

    request_id: str
    reservation: LeasedReservation


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
    if len(recovered) > MAX_LEASES_PER_CALL:
        raise InvalidArgument.field("leases", f"at most {MAX_LEASES_PER_CALL} per call")
    if sum(len(entry.lost) for entry in recovered) > MAX_LOST_REQUESTS_PER_CALL:
        raise InvalidArgument.field("leases", f"at most {MAX_LOST_REQUESTS_PER_CALL} lost requests per call")
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
            check_leased(f"leases[{index}].lost[{number}].reservation", lost.reservation)
        checked.append((lease_id, entry))
    return sorted(checked, key=lambda pair: pair[0])


async def _recover_one(conn: BaseDBAsyncClient, lease_id: uuid.UUID, entry: RecoveredLease) -> int:
    lease = await locked_lease(conn, lease_id)
    if lease is None:
        return 0  # closed by the sweeper: what it held was charged
    rows = []
    for lost in entry.lost:
        leased = lost.reservation
        rows.append(leased_row(lease, uuid.UUID(lost.request_id), leased))
    opened = set(await insert_open_records(conn, rows, skip_existing=True))
    taken = [0, 0, 0]
    for lost in entry.lost:
        if uuid.UUID(lost.request_id) in opened:
            taken[0] += lost.reservation.estimated_input_tokens
            taken[1] += lost.reservation.max_output_tokens
            taken[2] += lost.reservation.reserved_cost_micros
    if opened and not await store.take_from_lease(
        conn, lease_id=lease.id, unlimited=lease.unlimited, amounts=(taken[0], taken[1], taken[2]), requests=len(opened)
    ):
        raise _NoLease
    if lease.unlimited and lease.reserved_counters:
        # Held nowhere yet (the lease holds nothing): the rows hold their reservations in the
        # budgets created since, so the sweeper's release and charge balance.
        added = reservations.Amounts(-taken[0], -taken[1], -taken[2])
        joined = reservations.decode_holds(lease.reserved_counters)
        await reservations.move(conn, joined, release=added, charge=NOTHING)
    if entry.release_rest and lease.requests_admitted is None:
        lease = await locked_lease(conn, lease_id)
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
    await store.drop_finished_leases(conn, [lease_id])
    return len(opened)
