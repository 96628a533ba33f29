"""The edge's lease journal: what a killed process leaves for the next one to recover."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import pytest

from claudeopus.edge.metering.journal import SLOT_BYTES, LeaseJournal, old_journals, read_journal
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.records import encode_frame, encode_leased
from claudeopus.edge.metering.types import LeasedReservation
from tests.edge.test_leases import KEY, Clock, LeasingControl, completion, lease, settled

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


def test_each_slot_holds_one_frame_of_the_shared_record_format(tmp_path: Path) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    request_id = str(uuid.uuid4())
    journal.lease_held(LEASE_ID)
    journal.admitted(request_id, leased())
    data = killed_copy(journal, tmp_path / "k").read_bytes()
    assert data[:SLOT_BYTES] == encode_frame(b"\x01" + BOOT).ljust(SLOT_BYTES, b"\0")
    assert data[SLOT_BYTES : 2 * SLOT_BYTES] == encode_frame(b"\x02" + uuid.UUID(LEASE_ID).bytes).ljust(
        SLOT_BYTES, b"\0"
    )
    request = b"\x03" + uuid.UUID(request_id).bytes + encode_leased(leased())
    assert data[2 * SLOT_BYTES : 3 * SLOT_BYTES] == encode_frame(request).ljust(SLOT_BYTES, b"\0"), (
        "the reservation packed as the spool packs it"
    )
    journal.settled([request_id])
    freed = killed_copy(journal, tmp_path / "k2").read_bytes()
    assert freed[2 * SLOT_BYTES : 2 * SLOT_BYTES + 8] == bytes(8), "freeing zeroes the frame's header"
    journal.lease_returned(LEASE_ID)
    journal.close()


def previous_layout_slot(payload: bytes) -> bytes:
    """A slot as the edge version before the shared record format wrote it: CRC-32 of the 92 bytes after it."""
    body = payload.ljust(SLOT_BYTES - 4, b"\0")
    return struct.pack("<I", zlib.crc32(body)) + body


def test_a_journal_in_the_previous_slot_layout_names_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "leases-000000000001.journal"
    request = b"\x03" + uuid.uuid4().bytes + encode_leased(leased())
    path.write_bytes(
        previous_layout_slot(b"\x01" + BOOT)
        + previous_layout_slot(b"\x02" + uuid.UUID(LEASE_ID).bytes)
        + previous_layout_slot(request)
    )
    with caplog.at_level(logging.WARNING, logger="claudeopus.edge.metering.journal"):
        assert read_journal(path, BOOT) == []
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (
        "lease journal leases-000000000001.journal has no header this edge reads (left by an earlier version, "
        "or damaged): what its leases hold is left to control's sweeper"
    )


def test_a_damaged_header_keeps_the_lost_requests_but_releases_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = LeaseJournal.create(tmp_path, boot=BOOT)
    request_id = str(uuid.uuid4())
    journal.admitted(request_id, leased())
    path = killed_copy(journal, tmp_path / "k")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # in the header's boot id
    path.write_bytes(bytes(data))
    [entry] = read_journal(path, BOOT)
    assert (entry.lost, entry.release_rest) == ([(request_id, leased())], False)
    assert "has no header this edge reads" in caplog.text
    journal.settled([request_id])
    journal.close()
