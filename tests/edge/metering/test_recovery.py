"""Lease recovery: the journals dead processes left, sent to control once the spool was replayed."""

from __future__ import annotations

import asyncio
import struct
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import grpc

from claudeopus.client import ClaudeOpusError, InvalidArgumentError, UnavailableError
from claudeopus.edge.metering.journal import SLOT_BYTES, LeaseJournal
from claudeopus.edge.metering.recovery import LeaseRecovery, batches
from claudeopus.edge.metering.types import LeasedReservation, RecoveredLease
from claudeopus.gateway_limits import MAX_LEASES_PER_CALL, MAX_LOST_REQUESTS_PER_CALL
from tests.support.fake_control import FakeControl

BOOT = uuid.UUID("11111111-2222-4333-8444-555555555555").bytes
LEASE_ID = "00000000-0000-4000-8000-00000000000a"


def leased(lease_id: str = LEASE_ID, tokens: int = 7) -> LeasedReservation:
    return LeasedReservation(lease_id, tokens, 2 * tokens, 3 * tokens, True, 1_700_000_000_123_456_789)


class RecoveringControl(FakeControl):
    def __init__(self, failures: Sequence[ClaudeOpusError] = ()) -> None:
        super().__init__()
        self.failures = list(failures)
        self.calls: list[list[RecoveredLease]] = []

    async def recover_leases(self, recovered: Sequence[RecoveredLease]) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.calls.append(list(recovered))
        return sum(len(entry.lost) for entry in recovered)


async def test_recovery_waits_for_the_spool_then_retries_until_control_takes_it(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    journal.lease_held(LEASE_ID)
    journal.admitted(str(uuid.uuid4()), leased())
    path = journal.path
    control = RecoveringControl([UnavailableError(grpc.StatusCode.UNAVAILABLE, "down")])
    idle = asyncio.Event()
    recovery = LeaseRecovery(control, [path], spool_idle=idle.is_set, boot=BOOT, min_delay=0.01, max_delay=0.02)
    recovery.start()
    await asyncio.sleep(0.1)
    assert control.calls == [] and len(control.failures) == 1, "not before the spool was replayed"
    idle.set()
    await asyncio.wait_for(recovery.wait(), 5)
    assert [[entry.lease_id for entry in call] for call in control.calls] == [[LEASE_ID]]
    assert recovery.rows_opened == 1 and not path.exists()
    await recovery.aclose()


async def test_a_refused_recovery_is_left_to_the_sweeper_and_stopping_keeps_the_journal(tmp_path: Path) -> None:
    first = LeaseJournal.create(tmp_path, boot=BOOT)
    first.lease_held(LEASE_ID)
    refused = RecoveringControl([InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "bad")])
    recovery = LeaseRecovery(refused, [first.path], spool_idle=lambda: True, boot=BOOT)
    recovery.start()
    await asyncio.wait_for(recovery.wait(), 5)
    assert refused.calls == [] and not first.path.exists()
    second = LeaseJournal.create(tmp_path, boot=BOOT)
    second.lease_held(LEASE_ID)
    stopped = LeaseRecovery(RecoveringControl(), [second.path], spool_idle=lambda: False, boot=BOOT)
    stopped.start()
    await stopped.aclose()
    assert second.path.exists()


def test_recovery_batches_stay_within_what_control_takes_per_call() -> None:
    one = (str(uuid.uuid4()), leased())
    many = [RecoveredLease(str(uuid.uuid4()), [], True) for _ in range(MAX_LEASES_PER_CALL + 1)]
    big = RecoveredLease(LEASE_ID, [one] * (MAX_LOST_REQUESTS_PER_CALL + 5), True)
    calls = list(batches([*many, big]))
    assert [len(call) for call in calls] == [MAX_LEASES_PER_CALL, 2, 1]
    assert [sum(len(e.lost) for e in call) for call in calls] == [0, MAX_LOST_REQUESTS_PER_CALL, 5]
    assert [e.release_rest for e in calls[1] + calls[2] if e.lease_id == LEASE_ID] == [False, True], (
        "the rest is released with the lease's last part, once every lost request has its row"
    )
    assert list(batches([])) == []


async def test_a_journal_in_the_previous_slot_layout_is_removed_without_a_call(tmp_path: Path) -> None:
    path = tmp_path / "leases-000000000001.journal"
    body = (b"\x02" + uuid.UUID(LEASE_ID).bytes).ljust(SLOT_BYTES - 4, b"\0")
    path.write_bytes(struct.pack("<I", zlib.crc32(body)) + body)
    control = RecoveringControl()
    recovery = LeaseRecovery(control, [path], spool_idle=lambda: True, boot=BOOT)
    recovery.start()
    await asyncio.wait_for(recovery.wait(), 5)
    assert control.calls == [] and not path.exists()
    await recovery.aclose()
