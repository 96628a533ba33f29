"""One owned task that sends what queues up in batches: the edge's authorizes and its settles.

A gRPC call costs far more CPU on both sides than the work control does for one entry, so
the edge does not make one per request: entries wait in a queue, and one owned task hands
whatever is queued (up to ``max_batch``, in queue order) to ``send``, then the next. A quiet
edge therefore sends each entry at once, alone; a busy one in batches as big as its
concurrency, at one call's cost. Before each call the task may linger up to ``linger``
seconds for more entries to join (not once a whole batch waits, nor at shutdown).

The task starts with the first entry; :meth:`Batcher.aclose` lets it send what is queued
within the shutdown grace period (:data:`~claudeopus.edge.tasks.SHUTDOWN_GRACE_SECONDS`),
cancels it after that, and hands back what it never sent.

Example::

    batcher = Batcher(send_batch, linger=0.01, name="settle")
    batcher.submit(entry)
    unsent = await batcher.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from claudeopus.edge.tasks import finish

__all__ = ["MAX_BATCH", "Batcher"]

MAX_BATCH = 256
T = TypeVar("T")


class Batcher(Generic[T]):
    """Queue entries for one owned task that calls ``send`` with batches of them, one call at a time.

    ``stale(entry)``: an entry whose caller gave up while it was queued; it is dropped, never sent.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[None]],
        *,
        name: str,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
        stale: Callable[[T], bool] | None = None,
    ) -> None:
        self._send = send
        self._name = name
        self._max_batch = max_batch
        self._linger = linger
        self._stale = stale
        self._queue: collections.deque[T] = collections.deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._batch_ready = asyncio.Event()  # a whole batch is queued, or shutdown began: linger no longer
        self._sender: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def closing(self) -> bool:
        """:meth:`aclose` was called."""
        return self._closing

    @property
    def pending(self) -> int:
        """Entries submitted and not yet through ``send``."""
        return len(self._queue) + self._in_flight

    def submit(self, entry: T) -> None:
        """Queue ``entry`` for the next batch."""
        self._queue.append(entry)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_forever(), name=f"{self._name}-batcher")
        self._wake.set()
        if len(self._queue) >= self._max_batch:
            self._batch_ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather_more()
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                self._in_flight = len(batch)
                try:
                    await self._send(batch)
                finally:
                    self._in_flight = 0
            if self._closing:
                return

    def _take(self) -> list[T]:
        batch: list[T] = []
        stale = self._stale
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if stale is None or not stale(entry):
                batch.append(entry)
        return batch

    async def _gather_more(self) -> None:
        """Linger for more entries to join the batch (not once a whole batch waits, not at shutdown)."""
        if self._linger and not self._closing and len(self._queue) < self._max_batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await self._batch_ready.wait()
        self._batch_ready.clear()

    async def aclose(self) -> list[T]:
        """Send what is queued (within the grace period, then the task is cancelled); returns what was never sent."""
        self._closing = True
        if self._sender is not None:
            self._wake.set()
            self._batch_ready.set()
            await finish(self._sender)
            self._sender = None
        unsent = list(self._queue)
        self._queue.clear()
        return unsent
