"""Settling usage after the response: owned tasks, retried while control is unreachable.

Settles run after the client already has its answer, so they add no latency.
Every task is tracked and awaited on shutdown; none is fire-and-forget.
"""

from __future__ import annotations

import asyncio
import logging
import time

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.edge.control import ControlClient, Outcome

_log = logging.getLogger(__name__)
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SHUTDOWN_GRACE_SECONDS = 15.0


class Settler:
    """Queue settles as owned tasks; :meth:`aclose` waits for them.

    Example::

        settler = Settler(control)
        settler.submit(request_id, outcome, started_at=time.perf_counter())
        await settler.aclose()
    """

    def __init__(self, control: ControlClient) -> None:
        self._control = control
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, request_id: str, outcome: Outcome, started_at: float) -> None:
        latency = time.perf_counter() - started_at
        task = asyncio.get_running_loop().create_task(self._settle(request_id, outcome, latency))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, request_id: str, outcome: Outcome, latency: float) -> None:
        for delay in (*RETRY_DELAYS, None):
            try:
                await self._control.settle(request_id, outcome, latency)
                return
            except UnavailableError:
                if delay is None:
                    break
                await asyncio.sleep(delay)
            except ClaudeOpusError as error:
                _log.error("settle of request %s refused: %s %s", request_id, error.code.name, error.reason)
                return
            except Exception as error:  # a settle must never vanish without a trace
                _log.error("settle of request %s failed: %s", request_id, type(error).__name__)
                return
        _log.error("settle of request %s failed: control unreachable", request_id)

    async def aclose(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            _log.error("%d settles still pending at shutdown were abandoned", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
