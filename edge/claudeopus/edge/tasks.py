"""Stopping the edge's owned background tasks on shutdown.

Example::

    await finish(self._sender)     # it ends by itself within the grace period, or is cancelled
    await cancel(self._task)       # cancelled now; returns once it has ended
"""

from __future__ import annotations

import asyncio
import contextlib

# How long shutdown lets an owned task finish its work (a batch on its way, leases to give back).
SHUTDOWN_GRACE_SECONDS = 15.0


async def finish(task: asyncio.Task[None], grace: float | None = None) -> None:
    """Let ``task`` end by itself within ``grace`` seconds (default :data:`SHUTDOWN_GRACE_SECONDS`),
    else cancel it; return once it has ended."""
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_SECONDS if grace is None else grace)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and return once it has ended."""
    await finish(task, grace=0)
