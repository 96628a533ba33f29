"""The ends of a lease: its edge returns it, or the sweeper closes it once nobody did.

Returning releases what the edge did not use (:func:`return_leases`). A lease nobody
recovered or returned is closed by the sweeper once the reservation timeout has passed since
it ended (:func:`expire_stale_leases`): what it still holds becomes one RESERVED row, with the
lease's id as its request id, which the sweeper then expires and charges like any reservation
nobody settled — the conservative choice, as for reservations. That includes what the edge
never used: at most one lease's worth per key, model and edge.

Example::

    await return_leases([LeaseUse(lease_id, requests=3, amounts=Amounts(30, 12, 0))])
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise.transactions import in_transaction

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import InvalidArgument
from claudeopus.control.ledger import reservations, store
from claudeopus.control.ledger.leases.rows import lease_row, locked_lease
from claudeopus.control.models import BudgetLease
from claudeopus.control.store.usage_rows import insert_open_records
from claudeopus.gateway_limits import MAX_LEASES_PER_CALL

EXPIRE_BATCH = 500


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """What an edge admitted from one lease in all, when it returns it."""

    lease_id: str
    requests: int
    amounts: reservations.Amounts


async def return_leases(uses: Sequence[LeaseUse]) -> None:
    """Release what the edge did not use of each lease; a lease returned again (or gone) is left alone."""
    if len(uses) > MAX_LEASES_PER_CALL:
        raise InvalidArgument.field("leases", f"at most {MAX_LEASES_PER_CALL} per call")
    checked: list[tuple[uuid.UUID, LeaseUse]] = []
    for index, use in enumerate(uses):
        lease_id = validation.uuid_value(f"leases[{index}].lease_id", use.lease_id)
        validation.non_negative(f"leases[{index}].requests", use.requests)
        for name in ("input_tokens", "output_tokens", "cost_micros"):
            validation.non_negative(f"leases[{index}].{name}", getattr(use.amounts, name))
        checked.append((lease_id, use))
    for lease_id, use in sorted(checked, key=lambda pair: pair[0]):
        async with in_transaction() as conn:
            lease = await locked_lease(conn, lease_id)
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
            await store.drop_finished_leases(conn, [lease_id])


async def expire_stale_leases(now: datetime, max_age: timedelta, *, batch: int = EXPIRE_BATCH) -> int:
    """Close leases ended more than ``max_age`` ago: what one still holds becomes a RESERVED row for the sweeper.

    Returns how many leases were closed. Run before expiring reservations, so the rows
    made here are expired (and charged) in the same sweep.
    """
    stale = await BudgetLease.filter(expires_at__lt=now - max_age).order_by("lease_id").limit(batch)
    closed = 0
    for candidate in stale:
        async with in_transaction() as conn:
            lease = await locked_lease(conn, candidate.lease_id)
            if lease is None:
                continue
            held = reservations.Amounts(lease.open_input_tokens, lease.open_output_tokens, lease.open_cost_micros)
            if not lease.unlimited and (held.input_tokens or held.output_tokens or held.cost_micros):
                row = lease_row(lease, lease.lease_id, held, stream=False, created_at=lease.created_at)
                await insert_open_records(conn, [row], skip_existing=True)
            await BudgetLease.filter(id=lease.id).using_db(conn).delete()
            closed += 1
    return closed
