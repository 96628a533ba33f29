"""Recovering what dead processes of this edge held from leases, in an owned background task.

At start-up the edge finds the lease journals earlier processes left in its spool directory
(:mod:`claudeopus.edge.metering.journal`; a clean stop leaves none, or one naming only leases it
could not return). Once the spool's settles — the earlier processes' among them — have been
replayed, so every settle that was saved has reached control, it sends each journal's leases
to control's RecoverLeases: the requests whose settle was lost get their usage rows, and what
the leases still hold is released, in calls within what control takes per call. A journal is
removed once control took all of it. While the spool is not yet replayed or control is
unreachable it tries again after a pause (:mod:`claudeopus.edge.metering.retrying`); an answer
that can never succeed is logged and that part is left to control's sweeper (which charges a
lease's remainder when it ends).

Example::

    recovery = LeaseRecovery(control, old_journals("spool", below=journal.number), spool_idle=settler.spool_empty)
    recovery.start()
    ...
    await recovery.aclose()
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from claudeopus.client import ClaudeOpusError
from claudeopus.edge.metering.journal import boot_id, read_journal
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.replay import is_permanent
from claudeopus.edge.metering.retrying import RetryingTask
from claudeopus.edge.metering.types import RecoveredLease
from claudeopus.gateway_limits import MAX_LEASES_PER_CALL, MAX_LOST_REQUESTS_PER_CALL

__all__ = ["LeaseRecovery", "batches"]

_log = logging.getLogger(__name__)
MIN_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0


def batches(recovered: Sequence[RecoveredLease]) -> Iterator[list[RecoveredLease]]:
    """Calls' worth of ``recovered``, each within what RecoverLeases takes (:mod:`claudeopus.gateway_limits`)."""
    batch: list[RecoveredLease] = []
    lost = 0
    for entry in recovered:
        starts = range(0, max(1, len(entry.lost)), MAX_LOST_REQUESTS_PER_CALL)
        for start in starts:
            # What the lease still holds is released with its last part only: every lost request has its row by then.
            last = start == starts[-1]
            lost_part = entry.lost[start : start + MAX_LOST_REQUESTS_PER_CALL]
            part = RecoveredLease(entry.lease_id, lost_part, entry.release_rest and last)
            if batch and (len(batch) >= MAX_LEASES_PER_CALL or lost + len(part.lost) > MAX_LOST_REQUESTS_PER_CALL):
                yield batch
                batch, lost = [], 0
            batch.append(part)
            lost += len(part.lost)
    if batch:
        yield batch


class LeaseRecovery:
    """Send the leases in ``journals`` to control once ``spool_idle()``; see the module docstring."""

    def __init__(
        self,
        control: ControlPort,
        journals: Sequence[Path],
        *,
        spool_idle: Callable[[], bool],
        boot: bytes | None = None,
        min_delay: float = MIN_DELAY_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
    ) -> None:
        self._control = control
        self._journals = list(journals)
        self._spool_idle = spool_idle
        self._boot = boot if boot is not None else boot_id()
        self._retrying = RetryingTask(min_delay=min_delay, max_delay=max_delay)
        self.rows_opened = 0

    def start(self) -> None:
        if self._journals:
            self._retrying.start(self._run, name="lease-recovery")

    async def wait(self) -> None:
        """Return once every journal was recovered (for tests)."""
        await self._retrying.wait()

    async def aclose(self) -> None:
        """Stop; a journal not fully recovered stays on disk for the next start."""
        await self._retrying.aclose()

    async def _run(self) -> None:
        for path in self._journals:
            try:
                recovered = read_journal(path, self._boot)
            except OSError as error:
                _log.error("lease journal %s could not be read: %s", path, type(error).__name__)
                continue
            for batch in batches(recovered):
                await self._retrying.until(functools.partial(self._send, batch))
            path.unlink(missing_ok=True)
            lost = sum(len(entry.lost) for entry in recovered)
            _log.info("lease journal %s recovered: %d lease(s), %d lost settle(s)", path.name, len(recovered), lost)

    async def _send(self, batch: list[RecoveredLease]) -> bool:
        """True once control took ``batch`` or refused it for good; False: try again after a pause."""
        if not self._spool_idle():  # every saved settle reaches control first
            return False
        try:
            self.rows_opened += await self._control.recover_leases(batch)
        except ClaudeOpusError as error:
            if not is_permanent(error):
                return False
            _log.error(
                "recovering %d lease(s) refused: %s %s; control's sweeper will close them",
                len(batch),
                error.code.name,
                error.reason or "(no reason)",
            )
        except Exception as error:  # kept and tried again
            _log.warning("recovering %d lease(s) failed: %s; will retry", len(batch), type(error).__name__)
            return False
        return True
