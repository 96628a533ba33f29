"""Replaying spooled settles to control, oldest first, in an owned background task.

The task wakes when records reach the spool (and at start-up, for what an earlier process
left), sends each to control's BatchSettle (a batch of one), and backs off while control is
unreachable. Settles are idempotent by request id, so a record sent twice (a crash between
the settle and the removal of its segment) changes nothing. Answers that can never succeed (``NOT_FOUND`` such as
``RESERVATION_NOT_FOUND``, ``INVALID_ARGUMENT``, ``ALREADY_EXISTS``, ``FAILED_PRECONDITION``)
are logged, without content, and the record is dropped; anything else is retried.

Example::

    replayer = Replayer(control, spool)
    replayer.start()
    ...
    await replayer.aclose()
"""

from __future__ import annotations

import asyncio
import logging

from claudeopus.client import (
    AlreadyExistsError,
    ClaudeOpusError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.types import Settlement
from claudeopus.edge.spool import Spool, SpoolError
from claudeopus.edge.tasks import cancel

__all__ = ["Replayer", "is_permanent"]

_log = logging.getLogger(__name__)
MIN_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0
_PERMANENT = (NotFoundError, InvalidArgumentError, AlreadyExistsError, FailedPreconditionError)


def is_permanent(error: ClaudeOpusError) -> bool:
    """Control refused this settle for good: sending it again cannot succeed."""
    return isinstance(error, _PERMANENT)


class _TryLater(Exception):
    """Control could not take this record now; keep it and back off."""


class Replayer:
    """Drain the spool into control whenever it has records; see the module docstring."""

    def __init__(
        self,
        control: ControlPort,
        spool: Spool,
        *,
        min_delay: float = MIN_DELAY_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
    ) -> None:
        self._control = control
        self._spool = spool
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._task: asyncio.Task[None] | None = None
        self.replayed = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop; whatever was not replayed stays on disk for the next start."""
        if self._task is None:
            return
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = self._min_delay
        while True:
            await self._spool.wait_for_records()
            before = self.replayed + self.dropped
            try:
                await self._spool.replay(self._send)
                delay = self._min_delay
            except _TryLater:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
            except (OSError, SpoolError) as error:
                _log.error("usage spool could not be read for replay: %s", type(error).__name__)
                await asyncio.sleep(self._max_delay)
            if done := self.replayed + self.dropped - before:
                _log.info("replayed %d spooled settle(s); %d bytes still spooled", done, self._spool.size_bytes)

    async def _send(self, record: Settlement) -> None:
        try:
            [refusal] = await self._control.settle_batch([record])
            if refusal is not None:
                raise refusal
        except ClaudeOpusError as error:
            if is_permanent(error):
                _log.warning(
                    "spooled settle of request %s dropped: control answered %s %s",
                    record.request_id,
                    error.code.name,
                    error.reason or "(no reason)",
                )
                self.dropped += 1
                return
            if not isinstance(error, UnavailableError):
                _log.warning(
                    "spooled settle of request %s not taken (%s %s); will retry",
                    record.request_id,
                    error.code.name,
                    error.reason or "(no reason)",
                )
            raise _TryLater from None
        except Exception as error:  # keep the record: it is retried after a pause, never lost
            _log.error("spooled settle of request %s failed: %s; will retry", record.request_id, type(error).__name__)
            raise _TryLater from None
        self.replayed += 1
