"""Stopping the edge's owned background tasks on shutdown.

Example::

    await finish(self._sender, grace=5.0)   # it ends by itself, or is cancelled after 5 s
    await cancel(self._task)                 # cancelled now; returns once it has ended
"""

from __future__ import annotations

import asyncio
import contextlib


async def finish(task: asyncio.Task[None], grace: float) -> None:
    """Let ``task`` end by itself within ``grace`` seconds, else cancel it; return once it has ended."""
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and return once it has ended."""
    await finish(task, grace=0)
