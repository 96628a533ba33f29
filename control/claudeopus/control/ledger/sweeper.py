"""The reservation sweeper: an owned background task that expires stale reservations.

A reservation whose edge never settled it is closed by :func:`expire_stale` as EXPIRED,
charged its reserved amounts. Leases whose edge never returned them are closed first (what
they still hold becomes a reservation row, see :mod:`claudeopus.control.ledger.leases.ends`),
so the same sweep expires them.

Every replica may run one; each row is closed only if it is still as read
(:func:`~claudeopus.control.ledger.closing.close_records`), which makes them safe together.

Example::

    async with ReservationSweeper(timeout=timedelta(minutes=15), interval=30.0, clock=utc_now):
        ...  # serve
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from claudeopus.control.domain import prices
from claudeopus.control.domain.clock import Clock
from claudeopus.control.ledger import closing, reservations
from claudeopus.control.ledger.authorize import capped_cost
from claudeopus.control.ledger.leases import ends
from claudeopus.control.models import BudgetMetric, UsageRecord, UsageSource, UsageStatus

_log = logging.getLogger(__name__)
EXPIRE_BATCH = 500


async def expire_stale(now: datetime, max_age: timedelta, *, batch: int = EXPIRE_BATCH) -> int:
    """Close reservations older than ``max_age`` as EXPIRED, charged their reserved amounts.

    Charging the whole reservation (its reserved cost when a cost budget held
    it, else its tokens at today's price) is the conservative choice: the edge that
    held it died without saying what the upstream produced, and the reserved
    amounts are what the budgets already allowed. A settle that arrives later
    replaces this charge with the real one. Returns how many were closed.
    """
    stale = (
        await UsageRecord.filter(status=UsageStatus.RESERVED, created_at__lt=now - max_age)
        .select_related("account")
        .order_by("created_at")
        .limit(batch)
    )
    closed = 0
    for record in stale:
        reserved = closing.reserved_amounts(record)
        holds = reservations.decode_holds(record.reserved_counters)
        if any(hold.metric is BudgetMetric.COST_MICROS for hold in holds):
            # Exactly what the cost budgets admitted, even if a price changed since.
            charge = reserved
        else:
            price = prices.in_force(await prices.chain_prices(record.account.ancestor_ids(), record.model))
            cost = capped_cost(reserved.input_tokens, reserved.output_tokens, price)
            charge = reservations.Amounts(reserved.input_tokens, reserved.output_tokens, cost)
        expired: dict[str, Any] = {
            "input_tokens": charge.input_tokens,
            "output_tokens": charge.output_tokens,
            "status": UsageStatus.EXPIRED,
            "source": UsageSource.RESERVED,
            "settled_at": now,
            "cost_micros": charge.cost_micros,
        }
        missed = await closing.close_records([closing.Closing(record, expired, charge)], raise_conflicts=True)
        closed += not missed
    return closed


class ReservationSweeper:
    def __init__(self, *, timeout: timedelta, interval: float, clock: Clock) -> None:
        self._timeout = timeout
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        """Expire what is stale now; returns how many reservations were closed."""
        total = 0
        while await ends.expire_stale_leases(self._clock(), self._timeout) >= ends.EXPIRE_BATCH:
            pass
        while True:
            closed = await expire_stale(self._clock(), self._timeout)
            total += closed
            if closed < EXPIRE_BATCH:
                return total

    async def _run(self) -> None:
        while True:
            try:
                closed = await self.sweep_once()
                if closed:
                    _log.warning("expired %d reservation(s) no edge settled within %s", closed, self._timeout)
            except Exception as exc:  # keep sweeping; log the type and stack, never values
                stack = "".join(traceback.format_tb(exc.__traceback__))
                _log.error("reservation sweep failed with %s\n%s", type(exc).__name__, stack)
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> ReservationSweeper:
        self._task = asyncio.create_task(self._run(), name="reservation-sweeper")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
