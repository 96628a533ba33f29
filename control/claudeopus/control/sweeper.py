"""The reservation sweeper: an owned background task that expires stale reservations.

Leases whose edge never returned them are closed first (what they still hold becomes a
reservation row, see :mod:`claudeopus.control.domain.leases`), so the same sweep expires them.

Every replica may run one; the conditional UPDATE in
:func:`claudeopus.control.domain.gateway.expire_stale` makes them safe together.

Example::

    async with ReservationSweeper(timeout=timedelta(minutes=15), interval=30.0, clock=utc_now):
        ...  # serve
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from datetime import timedelta
from types import TracebackType

from claudeopus.control.domain import gateway, leases
from claudeopus.control.domain.clock import Clock

_log = logging.getLogger(__name__)


class ReservationSweeper:
    def __init__(self, *, timeout: timedelta, interval: float, clock: Clock) -> None:
        self._timeout = timeout
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        """Expire what is stale now; returns how many reservations were closed."""
        total = 0
        while await leases.expire_stale_leases(self._clock(), self._timeout) >= leases.EXPIRE_BATCH:
            pass
        while True:
            closed = await gateway.expire_stale(self._clock(), self._timeout)
            total += closed
            if closed < gateway.EXPIRE_BATCH:
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
