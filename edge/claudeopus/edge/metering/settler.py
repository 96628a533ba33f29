"""Settling usage after the response: batched, owned, spooled to disk while control is unreachable.

Settles run after the client already has its answer, so they add no latency. They queue
up in the settle batcher (:mod:`~claudeopus.edge.metering.batcher`), whose owned task sends
them to control's BatchSettle: whatever finished while the previous batch was on its way
travels in the next one, up to ``max_batch``. Before each call the task lingers up to
``linger`` seconds (``CLAUDEOPUS_SETTLE_LINGER``) for more to finish: a batch costs control
little more than one settle, and on a quiet edge a settle sent at once would compete with
the next request's authorize for control and for the same budget counters, on the request
path. Reservations stay held that much longer. If control cannot be
reached (or does not answer within ``CLAUDEOPUS_CONTROL_TIMEOUT``), or answers with an
error that may pass, the settles go to the durable spool (:mod:`claudeopus.edge.metering.spool`)
and the replayer (:mod:`claudeopus.edge.metering.replay`) sends them when control is back. While
the spool holds records, new settles join it behind them, so settles reach control in
the order they were made. Nothing is fire-and-forget: the sending task is awaited on
shutdown, and what it could not send by then is spooled for the next start.

The lease book hears of both: a batch that could not reach control drops every lease (requests
fail closed until control answers again), and a leased request whose settle control or the
spool took leaves the lease journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

import grpc

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.edge.metering.batcher import MAX_BATCH, Batcher
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.replay import Replayer, is_permanent
from claudeopus.edge.metering.spool import Spool, SpoolError
from claudeopus.edge.metering.types import LeasedReservation, Outcome, Settlement

_log = logging.getLogger(__name__)
# Whole-batch failures that mean control could not be reached (in time).
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class Settler:
    """Settle through one owned batcher; :meth:`aclose` drains it, then stops replay and the spool.

    Example::

        settler = await Settler.start(control, "spool", spool_max_bytes=64 * 1024 * 1024)
        settler.submit(request_id, outcome, started_at=time.perf_counter())
        await settler.aclose()
    """

    def __init__(
        self,
        control: ControlPort,
        spool: Spool,
        replayer: Replayer | None = None,
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
        leases: LeaseBook | None = None,
    ) -> None:
        """``leases``: the lease book to tell (none given: leasing is off)."""
        self._control = control
        self._spool = spool
        self._replayer = replayer
        self._leases = leases if leases is not None else LeaseBook(control, 0)
        self._batcher = Batcher(self._send, name="settle", max_batch=max_batch, linger=linger)

    @classmethod
    async def start(
        cls,
        control: ControlPort,
        spool_dir: str | os.PathLike[str],
        spool_max_bytes: int,
        *,
        linger: float = 0.0,
        leases: LeaseBook | None = None,
    ) -> Settler:
        """Open the spool and start replaying whatever it holds (also what an earlier process left)."""
        spool = await Spool.open(spool_dir, max_bytes=spool_max_bytes)
        replayer = Replayer(control, spool)
        replayer.start()
        return cls(control, spool, replayer, linger=linger, leases=leases)

    @property
    def spool_empty(self) -> bool:
        """Every spooled settle (an earlier process's too) has been replayed."""
        return self._spool.empty

    @property
    def pending(self) -> int:
        """Settles submitted and not yet taken by control or the spool."""
        return self._batcher.pending

    @property
    def spool_full(self) -> bool:
        """The spool reached its size limit: new requests must be refused until replay makes room."""
        return self._spool.full

    def submit(
        self,
        request_id: str,
        outcome: Outcome,
        started_at: float,
        *,
        missing_ok: bool = False,
        leased: LeasedReservation | None = None,
    ) -> None:
        """Settlement in the background; ``missing_ok``: control may never have opened this reservation;
        ``leased``: the request was admitted from a lease (its settle opens its row)."""
        latency_ns = int((time.perf_counter() - started_at) * 1e9)
        self._batcher.submit(Settlement(request_id, outcome, latency_ns, leased, missing_ok))

    async def _send(self, batch: list[Settlement]) -> None:
        try:
            await self._send_now(batch)
        except asyncio.CancelledError:
            # Shutdown ran out of patience: keep them on disk for the next start.
            await asyncio.shield(self._spool_all(batch))
            raise

    async def _send_now(self, batch: Sequence[Settlement]) -> None:
        if not self._spool.empty:
            await self._spool_all(batch)
            return
        try:
            answers = await self._control.settle_batch(batch)
        except ClaudeOpusError as error:
            if not isinstance(error, UnavailableError):
                _log.warning(
                    "batch of %d settles not taken (%s %s); spooling it", len(batch), error.code.name, error.reason
                )
            if error.code in _UNREACHABLE:
                self._leases.drop_all()
            await self._spool_all(batch)
            return
        except Exception as error:  # a settle must never vanish without a trace: spool it
            _log.error("batch of %d settles failed: %s; spooling it", len(batch), type(error).__name__)
            await self._spool_all(batch)
            return
        retry: list[Settlement] = []
        done: list[Settlement] = []
        for settle, refusal in zip(batch, answers, strict=True):
            (retry if refusal and self._keep(settle, refusal) else done).append(settle)
        if retry:
            await self._spool_all(retry)  # each tells of itself once spooled
        self._tell_settled(done)

    def _tell_settled(self, settles: Sequence[Settlement]) -> None:
        """Control or the spool took these: the lease journal may forget the leased ones."""
        self._leases.settled(settle.request_id for settle in settles if settle.leased is not None)

    def _keep(self, settle: Settlement, error: ClaudeOpusError) -> bool:
        """Whether a settle control refused on its own should be spooled and tried again."""
        if settle.missing_ok and error.reason == "RESERVATION_NOT_FOUND":
            _log.debug("request %s was never reserved: nothing to release", settle.request_id)
            return False
        if is_permanent(error):
            _log.error("settle of request %s refused: %s %s", settle.request_id, error.code.name, error.reason)
            return False
        _log.warning(
            "settle of request %s not taken (%s %s); spooling it", settle.request_id, error.code.name, error.reason
        )
        return True

    async def _spool_all(self, batch: Sequence[Settlement]) -> None:
        """Spool ``batch`` in order; its records share the spool's group commits (one fsync for many)."""
        if self._spool.empty:
            _log.warning("control unreachable for settles: spooling them to %s for replay", self._spool.directory)
        await asyncio.gather(*(self._spool_one(settle) for settle in batch))

    async def _spool_one(self, settle: Settlement) -> None:
        try:
            await self._spool.append(settle)
        except SpoolError as error:
            # Nothing else can keep it: control's sweeper will close the reservation (charged as reserved).
            _log.error("settle of request %s lost: %s", settle.request_id, error)
            return
        _log.debug("settle of request %s spooled for replay", settle.request_id)
        self._tell_settled((settle,))

    async def aclose(self) -> None:
        """Send what is queued (up to the grace period; the rest is spooled), then stop replay and the spool."""
        left = await self._batcher.aclose()
        if left:
            _log.warning("%d settles still queued at shutdown: spooling them for the next start", len(left))
            await self._spool_all(left)
        if self._replayer is not None:
            await self._replayer.aclose()
        await self._spool.aclose()
