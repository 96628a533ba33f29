"""A deadline on a block of awaits: ``asyncio.timeout`` at a fixed ``time.perf_counter()`` value, cheaper.

Every forwarded request bounds its upstream exchange this way twice (the response head, then
the body). ``asyncio.timeout`` costs about 9 us per use on CPython 3.11; this does the same
with one timer handle (about 3 us): when the deadline passes, the task is cancelled, and the
cancellation leaves the block as :class:`TimeoutError`. A cancellation from elsewhere (the
client left, the server is stopping) passes through unchanged.

Example::

    async with Deadline(time.perf_counter() + 30.0):
        response = await upstream.send("POST", "chat/completions", body)
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """Cancel the block's task at ``at`` (a ``time.perf_counter()`` value); the block raises TimeoutError."""

    __slots__ = ("_at", "_cancelling", "_expired", "_handle", "_task")

    def __init__(self, at: float) -> None:
        self._at = at
        self._expired = False
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = asyncio.get_running_loop().call_later(self._at - time.perf_counter(), self._expire)
        return self

    def _expire(self) -> None:
        assert self._task is not None
        self._expired = True
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._handle is not None
        assert self._task is not None
        self._handle.cancel()
        # As asyncio.timeout: only our own cancellation (none other pending) becomes a TimeoutError.
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
