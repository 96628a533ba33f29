"""Settling usage after the response: batched, owned, spooled to disk while control is unreachable.

Settles run after the client already has its answer, so they add no latency. They queue
up and one owned task sends them to control's BatchSettle: whatever finished while the
previous batch was on its way travels in the next one, up to ``max_batch``. Before each
call the task lingers up to ``linger`` seconds (``CLAUDEOPUS_SETTLE_LINGER``) for more to
finish: a batch costs control little more than one settle, and on a quiet edge a settle
sent at once would compete with the next request's authorize for control and for the same
budget counters, on the request path. Reservations stay held that much longer. If control cannot be
reached (or does not answer within ``CLAUDEOPUS_CONTROL_TIMEOUT``), or answers with an
error that may pass, the settles go to the durable spool (:mod:`claudeopus.edge.metering.spool`)
and the replayer (:mod:`claudeopus.edge.metering.replay`) sends them when control is back. While
the spool holds records, new settles join it behind them, so settles reach control in
the order they were made. Nothing is fire-and-forget: the sending task is awaited on
shutdown, and what it could not send by then is spooled for the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence

import grpc

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.edge.control import ControlClient
from claudeopus.edge.metering.replay import Replayer, is_permanent
from claudeopus.edge.metering.spool import Spool, SpoolError
from claudeopus.edge.metering.types import LeasedReservation, Outcome, Settlement
from claudeopus.edge.tasks import finish

_log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 15.0
# Whole-batch failures that mean control could not be reached (in time).
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
MAX_BATCH = 256


class Settler:
    """Queue settles for one owned sending task; :meth:`aclose` drains it, then stops replay and the spool.

    Example::

        settler = await Settler.start(control, "spool", spool_max_bytes=64 * 1024 * 1024)
        settler.submit(request_id, outcome, started_at=time.perf_counter())
        await settler.aclose()
    """

    def __init__(
        self,
        control: ControlClient,
        spool: Spool,
        replayer: Replayer | None = None,
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
        on_unreachable: Callable[[], None] | None = None,
        on_settled: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self._control = control
        self._on_settled = on_settled  # told the request ids whose settle control or the spool took
        self._spool = spool
        self._replayer = replayer
        self._max_batch = max_batch
        self._linger = linger
        self._on_unreachable = on_unreachable  # told when a batch could not reach control at all
        self._queue: collections.deque[Settlement] = collections.deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._batch_ready = asyncio.Event()  # a whole batch is queued, or shutdown began: linger no longer
        self._sender: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def start(
        cls,
        control: ControlClient,
        spool_dir: str | os.PathLike[str],
        spool_max_bytes: int,
        *,
        linger: float = 0.0,
        on_unreachable: Callable[[], None] | None = None,
        on_settled: Callable[[Iterable[str]], None] | None = None,
    ) -> Settler:
        """Open the spool and start replaying whatever it holds (also what an earlier process left)."""
        spool = await Spool.open(spool_dir, max_bytes=spool_max_bytes)
        replayer = Replayer(control, spool)
        replayer.start()
        return cls(control, spool, replayer, linger=linger, on_unreachable=on_unreachable, on_settled=on_settled)

    @property
    def spool_empty(self) -> bool:
        """Every spooled settle (an earlier process's too) has been replayed."""
        return self._spool.empty

    @property
    def pending(self) -> int:
        """Settles submitted and not yet taken by control or the spool."""
        return len(self._queue) + self._in_flight

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
        self._queue.append(Settlement(request_id, outcome, latency_ns, leased, missing_ok))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_forever())
        self._wake.set()
        if len(self._queue) >= self._max_batch:
            self._batch_ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather_more()
            while self._queue:
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = count
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    # Shutdown ran out of patience: keep them on disk for the next start.
                    await asyncio.shield(self._spool_all(batch))
                    raise
                finally:
                    self._in_flight = 0
            if self._closing:
                return

    async def _gather_more(self) -> None:
        """Linger for more settles to join the batch (not once a whole batch waits, not at shutdown)."""
        if self._linger and not self._closing and len(self._queue) < self._max_batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await self._batch_ready.wait()
        self._batch_ready.clear()

    async def _send(self, batch: Sequence[Settlement]) -> None:
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
            if self._on_unreachable is not None and error.code in _UNREACHABLE:
                self._on_unreachable()
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
        if self._on_settled is not None:
            self._on_settled(settle.request_id for settle in settles if settle.leased is not None)

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
        """Send what is queued (up to a grace period; the rest is spooled), then stop replay and the spool."""
        self._closing = True
        if self._sender is not None:
            self._wake.set()
            self._batch_ready.set()
            await finish(self._sender, SHUTDOWN_GRACE_SECONDS)
            self._sender = None
        if self._queue:
            left = list(self._queue)
            self._queue.clear()
            _log.warning("%d settles still queued at shutdown: spooling them for the next start", len(left))
            await self._spool_all(left)
        if self._replayer is not None:
            await self._replayer.aclose()
        await self._spool.aclose()
