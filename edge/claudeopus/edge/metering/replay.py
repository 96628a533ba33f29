"""Replaying spooled settles to control, oldest first, in batches, in an owned background task.

The task wakes when records reach the spool (and at start-up, for what an earlier process
left), sends them to control's BatchSettle up to :data:`MAX_BATCH` at a time, and backs off
while control is unreachable (:mod:`claudeopus.edge.metering.retrying`). Per record:

- taken (settled now, or found already settled): done. Settle is idempotent by request id, so
  a record sent twice (a crash between the settle and the removal of its segment) changes
  nothing;
- refused for good (``NOT_FOUND`` such as ``RESERVATION_NOT_FOUND``, ``INVALID_ARGUMENT``,
  ``ALREADY_EXISTS``, ``FAILED_PRECONDITION``): logged, without content, and dropped;
- refused otherwise: it and the records after it stay spooled, and the pass is tried again
  after a pause (records after it that control took are sent again then).

A call that fails as a whole refuses none of its records: all of them are tried again. A
record leaves the spool only once control took it or refused it for good, and a segment is
removed once all its records have (see :meth:`Spool.replay`).

Example::

    replayer = Replayer(control, spool)
    replayer.start()
    ...
    await replayer.aclose()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from claudeopus.client import (
    AlreadyExistsError,
    ClaudeOpusError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.retrying import RetryingTask
from claudeopus.edge.metering.spool import Spool, SpoolError
from claudeopus.edge.metering.types import Settlement
from claudeopus.gateway_limits import MAX_SETTLES_PER_CALL

__all__ = ["MAX_BATCH", "Replayer", "is_permanent"]

_log = logging.getLogger(__name__)
MAX_BATCH = min(256, MAX_SETTLES_PER_CALL)  # records per BatchSettle call
MIN_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0
_PERMANENT = (NotFoundError, InvalidArgumentError, AlreadyExistsError, FailedPreconditionError)


def is_permanent(error: ClaudeOpusError) -> bool:
    """Control refused this for good: sending it again cannot succeed."""
    return isinstance(error, _PERMANENT)


class Replayer:
    """Drain the spool into control whenever it has records; see the module docstring."""

    def __init__(
        self,
        control: ControlPort,
        spool: Spool,
        *,
        min_delay: float = MIN_DELAY_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._control = control
        self._spool = spool
        self._max_batch = max_batch
        self._retrying = RetryingTask(min_delay=min_delay, max_delay=max_delay)
        self.replayed = 0
        self.dropped = 0

    def start(self) -> None:
        self._retrying.start(self._run, name="spool-replay")

    async def aclose(self) -> None:
        """Stop; whatever was not replayed stays on disk for the next start."""
        await self._retrying.aclose()

    async def _run(self) -> None:
        while True:
            await self._spool.wait_for_records()
            await self._retrying.until(self._replay_pass)

    async def _replay_pass(self) -> bool:
        """Replay what the spool holds; True once it reached the end, False to try again after a pause."""
        caught_up = True

        async def send(batch: Sequence[Settlement]) -> int:
            nonlocal caught_up
            done = await self._settle(batch)
            caught_up = done == len(batch)
            return done

        try:
            done = await self._spool.replay(send, max_batch=self._max_batch)
        except (OSError, SpoolError) as error:
            _log.error("usage spool could not be read for replay: %s", type(error).__name__)
            return False
        if done:
            _log.info("replayed %d spooled settle(s); %d bytes still spooled", done, self._spool.size_bytes)
        return caught_up

    async def _settle(self, batch: Sequence[Settlement]) -> int:
        """Send ``batch``; how many of it, from the first, control took or refused for good."""
        try:
            answers = await self._control.settle_batch(batch)
        except ClaudeOpusError as error:
            if not isinstance(error, UnavailableError):
                _log.warning(
                    "%d spooled settle(s) not taken (%s %s); will retry",
                    len(batch),
                    error.code.name,
                    error.reason or "(no reason)",
                )
            return 0
        except Exception as error:  # kept: retried after a pause, never lost
            _log.error("%d spooled settle(s) failed: %s; will retry", len(batch), type(error).__name__)
            return 0
        for index, (record, answer) in enumerate(zip(batch, answers, strict=True)):
            if answer is None:
                self.replayed += 1
            elif is_permanent(answer):
                _log.warning(
                    "spooled settle of request %s dropped: control answered %s %s",
                    record.request_id,
                    answer.code.name,
                    answer.reason or "(no reason)",
                )
                self.dropped += 1
            else:
                if not isinstance(answer, UnavailableError):
                    _log.warning(
                        "spooled settle of request %s not taken (%s %s); will retry",
                        record.request_id,
                        answer.code.name,
                        answer.reason or "(no reason)",
                    )
                return index
        return len(batch)
