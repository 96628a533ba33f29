"""Settling usage after the response: owned tasks, spooled to disk while control is unreachable.

Settles run after the client already has its answer, so they add no latency. Each is sent to
control once; if control cannot be reached (or does not answer within
``CLAUDEOPUS_CONTROL_TIMEOUT``), or answers with an error that may pass, the settle goes to
the durable spool (:mod:`claudeopus.edge.spool`) and the replayer (:mod:`claudeopus.edge.replay`)
sends it when control is back. While the spool holds records, new settles join it behind
them, so settles reach control in the order they were made. Every task is tracked and
awaited on shutdown; none is fire-and-forget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.edge.control import ControlClient, Outcome
from claudeopus.edge.replay import Replayer, is_permanent
from claudeopus.edge.spool import Spool, SpooledSettle, SpoolError

_log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 15.0


class Settler:
    """Queue settles as owned tasks; :meth:`aclose` waits for them, then stops replay and closes the spool.

    Example::

        settler = await Settler.start(control, "spool", spool_max_bytes=64 * 1024 * 1024)
        settler.submit(request_id, outcome, started_at=time.perf_counter())
        await settler.aclose()
    """

    def __init__(self, control: ControlClient, spool: Spool, replayer: Replayer | None = None) -> None:
        self._control = control
        self._spool = spool
        self._replayer = replayer
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, control: ControlClient, spool_dir: str | os.PathLike[str], spool_max_bytes: int) -> Settler:
        """Open the spool and start replaying whatever it holds (also what an earlier process left)."""
        spool = await Spool.open(spool_dir, max_bytes=spool_max_bytes)
        replayer = Replayer(control, spool)
        replayer.start()
        return cls(control, spool, replayer)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    @property
    def spool_full(self) -> bool:
        """The spool reached its size limit: new requests must be refused until replay makes room."""
        return self._spool.full

    def submit(self, request_id: str, outcome: Outcome, started_at: float, *, missing_ok: bool = False) -> None:
        """Settle in the background; ``missing_ok``: control may never have opened this reservation."""
        latency = time.perf_counter() - started_at
        task = asyncio.get_running_loop().create_task(self._settle(request_id, outcome, latency, missing_ok))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, request_id: str, outcome: Outcome, latency: float, missing_ok: bool = False) -> None:
        if self._spool.empty:
            try:
                await self._control.settle(request_id, outcome, latency)
                return
            except ClaudeOpusError as error:
                if missing_ok and error.reason == "RESERVATION_NOT_FOUND":
                    _log.debug("request %s was never reserved: nothing to release", request_id)
                    return
                if is_permanent(error):
                    _log.error("settle of request %s refused: %s %s", request_id, error.code.name, error.reason)
                    return
                if not isinstance(error, UnavailableError):
                    _log.warning(
                        "settle of request %s not taken (%s %s); spooling it", request_id, error.code.name, error.reason
                    )
            except Exception as error:  # a settle must never vanish without a trace: spool it
                _log.error("settle of request %s failed: %s; spooling it", request_id, type(error).__name__)
        await self._spool_settle(request_id, outcome, latency)

    async def _spool_settle(self, request_id: str, outcome: Outcome, latency: float) -> None:
        record = SpooledSettle(
            request_id=request_id,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            status=outcome.status,
            source=outcome.source,
            http_status=outcome.http_status,
            latency_ns=int(latency * 1e9),
        )
        if self._spool.empty:
            _log.warning("control unreachable for settles: spooling them to %s for replay", self._spool.directory)
        try:
            await self._spool.append(record)
        except SpoolError as error:
            # Nothing else can keep it: control's sweeper will close the reservation (charged as reserved).
            _log.error("settle of request %s lost: %s", request_id, error)
            return
        _log.debug("settle of request %s spooled for replay", request_id)

    async def aclose(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                _log.error("%d settles still pending at shutdown were abandoned", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        if self._replayer is not None:
            await self._replayer.aclose()
        await self._spool.aclose()
