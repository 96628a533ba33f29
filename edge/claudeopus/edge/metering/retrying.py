"""One owned background task that tries again what failed, pausing longer each time.

Replay (:mod:`claudeopus.edge.metering.replay`) and lease recovery
(:mod:`claudeopus.edge.metering.recovery`) both wait for control this way: an attempt that
fails is tried again after ``min_delay``, the pause doubling after each failure up to
``max_delay``; the next :meth:`RetryingTask.until` starts again from ``min_delay``.

Example::

    retrying = RetryingTask(min_delay=0.05, max_delay=2.0)
    retrying.start(work, name="spool-replay")  # work() awaits retrying.until(attempt) as often as it needs
    ...
    await retrying.aclose()                      # cancelled; returns once it has ended
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from claudeopus.edge.tasks import cancel

__all__ = ["RetryingTask"]


class RetryingTask:
    """The task and its backoff; see the module docstring."""

    def __init__(self, *, min_delay: float, max_delay: float) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._task: asyncio.Task[None] | None = None

    def start(self, work: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        """Run ``work()`` as this object's task (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(work(), name=name)

    async def until(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        """Call ``attempt`` until it answers True (done), pausing between the tries that answer False."""
        delay = self.min_delay
        while not await attempt():
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)

    async def wait(self) -> None:
        """Return once ``work`` has ended by itself (at once if it was never started)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """Stop the task; returns once it has ended."""
        task, self._task = self._task, None
        if task is not None:
            await cancel(task)
