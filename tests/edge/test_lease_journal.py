"""The edge's lease journal and its recovery: what a killed process leaves, and what the next one sends."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from claudeopus.client import ClaudeOpusError, InvalidArgumentError, UnavailableError
from claudeopus.edge.lease_journal import SLOT_BYTES, LeaseJournal, old_journals, read_journal
from claudeopus.edge.lease_recovery import MAX_LEASES, MAX_LOST, LeaseRecovery, batches
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.types import LeasedReservation, RecoveredLease
from tests.edge.test_leases import KEY, Clock, LeasingControl, completion, lease, settled
from tests.support.fake_control import FakeControl

BOOT = uuid.UUID("11111111-2222-4333-8444-555555555555").bytes
LEASE_ID = "00000000-0000-4000-8000-00000000000a"


def leased(lease_id: str = LEASE_ID, tokens: int = 7) -> LeasedReservation:
    return LeasedReservation(lease_id, tokens, 2 * tokens, 3 * tokens, True, 1_700_000_000_123_456_789)


def killed_copy(journal: LeaseJournal, into: Path) -> Path:
    """The journal as a process killed now leaves it (the file, not closed)."""
    into.mkdir(exist_ok=True)
    return Path(shutil.copy(journal.path, into / journal.path.name))


def test_a_killed_process_leaves_its_unsettled_requests_and_held_leases(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    other = "00000000-0000-4000-8000-00000000000b"
    returned = "00000000-0000-4000-8000-00000000000c"
    for lease_id in (LEASE_ID, returned):
        assert journal.lease_held(lease_id)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    assert journal.admitted(ids[0], leased(tokens=1))
    assert journal.admitted(ids[1], leased(tokens=2))
    assert journal.admitted(ids[2], leased(other, tokens=3))  # a lease returned earlier, request still out
    assert journal.admitted(ids[3], leased(tokens=4))
    journal.settled([ids[1], "not-journaled"])
    journal.lease_returned(returned)
    recovered = {entry.lease_id: entry for entry in read_journal(killed_copy(journal, tmp_path / "k"), BOOT)}
    assert set(recovered) == {LEASE_ID, other}
    assert recovered[LEASE_ID].lost == [(ids[0], leased(tokens=1)), (ids[3], leased(tokens=4))]
    assert recovered[other].lost == [(ids[2], leased(other, tokens=3))]
    assert all(entry.release_rest for entry in recovered.values())
    assert journal.in_use == 4
    journal.close()
    assert journal.path.exists(), "kept: the next start recovers it"


def test_the_journal_and_its_directory_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        journal = LeaseJournal.create(tmp_path / "new" / "spool", boot=BOOT)
    finally:
        os.umask(old)
    try:
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "new" / "spool").stat().st_mode & 0o777 == 0o700
        assert journal.path.stat().st_mode & 0o777 == 0o600
    finally:
        journal.close()


def test_a_journal_from_another_boot_does_not_release_what_leases_hold(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    journal.lease_held(LEASE_ID)
    path = killed_copy(journal, tmp_path / "k")
    assert [entry.release_rest for entry in read_journal(path, BOOT)] == [True]
    assert [entry.release_rest for entry in read_journal(path, uuid.uuid4().bytes)] == [False]
    assert [entry.release_rest for entry in read_journal(path, b"")] == [False], "boot unknown: not trusted"
    journal.close()


def test_a_slot_torn_by_a_kill_mid_store_is_ignored(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    journal.admitted(first, leased())
    journal.admitted(second, leased())
    path = killed_copy(journal, tmp_path / "k")
    data = bytearray(path.read_bytes())
    data[2 * SLOT_BYTES + 40] ^= 0xFF  # the second request's slot (slot 0 is the header)
    path.write_bytes(bytes(data))
    assert [entry.lost for entry in read_journal(path, BOOT)] == [[(first, leased())]]
    journal.settled([first, second])
    journal.close()
    assert not journal.path.exists(), "nothing left in it: removed at a clean stop"


def test_slots_are_reused_and_a_full_journal_says_so(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, capacity=3, boot=BOOT)  # the header and two slots
    ids = [str(uuid.uuid4()) for _ in range(3)]
    assert journal.admitted(ids[0], leased()) and journal.lease_held(LEASE_ID)
    assert journal.full and not journal.admitted(ids[1], leased()) and not journal.lease_held(LEASE_ID)
    journal.settled([ids[0]])
    assert not journal.full and journal.admitted(ids[2], leased())
    recovered = read_journal(killed_copy(journal, tmp_path / "k"), BOOT)
    assert [entry.lost for entry in recovered] == [[(ids[2], leased())]]
    journal.close()


def test_journals_are_numbered_after_those_an_earlier_process_left(tmp_path: Path) -> None:
    first = LeaseJournal.create(tmp_path, boot=BOOT)
    first.lease_held(LEASE_ID)
    first.close()
    second = LeaseJournal.create(tmp_path, boot=BOOT)
    assert (first.number, second.number) == (1, 2)
    assert old_journals(tmp_path, below=second.number) == [first.path]
    assert old_journals(tmp_path / "missing") == []
    second.close()


async def test_a_full_journal_makes_the_book_authorize_with_control(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, capacity=3, boot=BOOT)  # the lease and one request
    control = LeasingControl(lease(5))
    book = LeaseBook(control, 1.0, journal=journal, clock=Clock())
    book.want(KEY, completion())
    await settled(book, control)
    first = str(uuid.uuid4())
    assert book.admit(KEY, completion(), first) is not None
    assert book.admit(KEY, completion(), str(uuid.uuid4())) is None, "no slot: not admitted unjournaled"
    journal.settled([first])
    assert book.admit(KEY, completion(), str(uuid.uuid4())) is not None
    await book.aclose()
    assert control.returned and journal.in_use == 1, "the lease's slot is freed once control took it back"
    journal.close()


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
    many = [RecoveredLease(str(uuid.uuid4()), [], True) for _ in range(MAX_LEASES + 1)]
    big = RecoveredLease(LEASE_ID, [one] * (MAX_LOST + 5), True)
    calls = list(batches([*many, big]))
    assert [len(call) for call in calls] == [MAX_LEASES, 2, 1]
    assert [sum(len(e.lost) for e in call) for call in calls] == [0, MAX_LOST, 5]
    assert [e.release_rest for e in calls[1] + calls[2] if e.lease_id == LEASE_ID] == [False, True], (
        "the rest is released with the lease's last part, once every lost request has its row"
    )
    assert list(batches([])) == []
