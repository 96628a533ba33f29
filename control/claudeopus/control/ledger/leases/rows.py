"""The usage rows opened from a lease: what an edge reserved for one request, and its RESERVED row.

Example::

    row = lease_row(lease, request_id, reserved_of(leased), stream=leased.stream, created_at=when)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from claudeopus.control.domain import validation
from claudeopus.control.ledger import reservations
from claudeopus.control.models import BudgetLease
from claudeopus.control.store.usage_rows import open_fields

NOTHING = reservations.Amounts(0, 0, 0)


@dataclass(frozen=True, slots=True)
class LeasedReservation:
    """What an edge reserved for one request it admitted from a lease (SettleRequest.leased)."""

    lease_id: str
    estimated_input_tokens: int
    max_output_tokens: int
    reserved_cost_micros: int
    stream: bool
    reserve_time: datetime

    @property
    def reserved(self) -> reservations.Amounts:
        return reservations.Amounts(self.estimated_input_tokens, self.max_output_tokens, self.reserved_cost_micros)


def check_leased(field: str, leased: LeasedReservation) -> None:
    validation.uuid_value(f"{field}.lease_id", leased.lease_id)
    for name in ("estimated_input_tokens", "max_output_tokens", "reserved_cost_micros"):
        validation.non_negative(f"{field}.{name}", getattr(leased, name))


def leased_row(lease: BudgetLease, request_id: uuid.UUID, leased: LeasedReservation) -> dict[str, Any]:
    """The RESERVED row of a request admitted from ``lease``, holding what the edge reserved for it."""
    return lease_row(
        lease,
        request_id,
        leased.reserved,
        stream=leased.stream,
        # Within the lease's life (an edge's clock may be off): the row lands in the period its holds are in.
        created_at=min(max(leased.reserve_time, lease.created_at), lease.expires_at),
    )


def lease_row(
    lease: BudgetLease, request_id: uuid.UUID, reserved: reservations.Amounts, *, stream: bool, created_at: datetime
) -> dict[str, Any]:
    """A RESERVED usage row holding ``reserved`` in the lease's counters, for its key and model."""
    return open_fields(
        request_id=request_id,
        api_key_id=lease.api_key_id,
        account_id=lease.account_id,
        model=lease.model,
        estimated_input_tokens=reserved.input_tokens,
        max_output_tokens=reserved.output_tokens,
        stream=stream,
        created_at=created_at,
        reserved_cost_micros=reserved.cost_micros,
        reserved_counters=lease.reserved_counters,
    )


async def locked_leases(conn: BaseDBAsyncClient, lease_ids: Sequence[uuid.UUID]) -> list[BudgetLease]:
    """The leases of ``lease_ids`` that exist, in id order, locked for ``conn``'s transaction (PostgreSQL)."""
    query = BudgetLease.filter(lease_id__in=lease_ids).order_by("lease_id").using_db(conn)
    if conn.capabilities.dialect == "postgres":
        query = query.select_for_update()
    return list(await query)


async def locked_lease(conn: BaseDBAsyncClient, lease_id: uuid.UUID) -> BudgetLease | None:
    found = await locked_leases(conn, [lease_id])
    return found[0] if found else None
