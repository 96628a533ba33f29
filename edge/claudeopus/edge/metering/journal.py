"""The lease journal: what this edge holds and admitted from leases, kept where a killed process leaves it.

A request admitted from a lease has no row at control until its settle arrives, and a lease
holds budget until it is returned. If the process dies first (SIGKILL, the OOM killer), the
next process started on the same spool directory reads the journal and tells control
(RecoverLeases, see :mod:`claudeopus.edge.metering.recovery`): each request whose settle was
lost gets its usage row — expired and charged what it reserved, as a request authorized alone
whose settle never came — and what each lease still held is released. So every admitted
request leaves exactly one usage row, with leases as without.

The journal is a file of fixed slots mapped into memory: recording an admission, its settle,
a lease and its return is a store into the page cache — no system call — and it outlives the
process. Not the machine: after an operating-system crash the last stores may be missing, so
a journal written before the current boot is not trusted to be complete. Its lost requests
still get their rows, but what its leases hold is left to control's sweeper to charge when
they end (the conservative choice).

Files in the spool directory (the spool's ``LOCK`` gives it to one process)::

    leases-000000000001.journal   one per process; removed at a clean stop when nothing is
                                  left in it, or once control took what it names

Slots, 96 bytes each, each holding one frame of :mod:`claudeopus.edge.metering.records`
(zero-padded); its payload, only ids and numbers, never text::

    u8 kind | ...
    kind 1 (slot 0, the header): 16 bytes boot id
    kind 2, a lease held:        16 bytes lease id
    kind 3, a request admitted:  16 bytes request id | its leased reservation (records' 49 bytes)

A slot without a whole frame is free (freeing zeroes the frame's header). A frame's checksum
is stored last, and a request's slot is written before it is forwarded, so one torn by a kill
mid-store was never forwarded.

A journal left by the edge version before this layout (its slots were ``u32 CRC-32 | kind |
...``, without a length) is not read: none of its slots holds a whole frame, so it names
nothing; :func:`read_journal` logs that it has no header, and recovery removes it. This was
chosen over reading the old layout as well, which would keep a second slot format alive for
one start: a journal only matters to the next start after a process of the same edge died
holding leases (or stopped while control was away). An upgrade right after that leaves those
leases to control's sweeper, which charges what they held when they end, as when no edge
ever starts again: budgets still hold, only the lost requests' own rows are missing.

Example::

    journal = LeaseJournal.create("spool")
    journal.lease_held(lease_id)
    journal.admitted(request_id, leased)       # False: full, authorize the request instead
    journal.settled([request_id])              # control or the spool has its settle
    journal.lease_returned(lease_id)
    journal.close()
    recovered = read_journal(path, boot_id())  # in the next process
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path

from claudeopus.edge.metering.records import (
    LEASED_BYTES,
    decode_leased,
    encode_leased,
    erase_frame,
    read_frame,
    store_frame,
)
from claudeopus.edge.metering.types import LeasedReservation, RecoveredLease
from claudeopus.private_files import open_private, private_directory

__all__ = ["LeaseJournal", "boot_id", "old_journals", "read_journal"]

_log = logging.getLogger(__name__)

SLOT_BYTES = 96
DEFAULT_SLOTS = 65_536  # at most this many leased requests in flight and leases held (6 MiB, sparse)
_HEADER, _LEASE, _REQUEST = 1, 2, 3
_KIND = struct.Struct("<B16s")  # kind and the first id; a request's reservation follows
_NAME = re.compile(r"^leases-(\d{12})\.journal$")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> bytes:
    """This boot of the machine (16 bytes; empty when the system does not say)."""
    try:
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError):
        return b""


def old_journals(directory: str | os.PathLike[str], below: int | None = None) -> list[Path]:
    """Journals in ``directory`` (numbered below ``below``, when given), oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in Path(directory).iterdir():
            match = _NAME.match(path.name)
            if match and (below is None or int(match.group(1)) < below):
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


class LeaseJournal:
    """This process's journal; see the module docstring."""

    def __init__(self, path: Path, memory: mmap.mmap, capacity: int) -> None:
        self.path = path
        self._memory = memory
        self._capacity = capacity
        self._next = 1  # slot 0 is the header
        self._free: list[int] = []
        self._requests: dict[str, int] = {}
        self._leases: dict[str, int] = {}

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], *, capacity: int = DEFAULT_SLOTS, boot: bytes | None = None
    ) -> LeaseJournal:
        """A new, empty journal numbered after every journal already in ``directory``."""
        folder = private_directory(directory)
        existing = old_journals(folder)
        number = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        while True:
            path = folder / f"leases-{number:012d}.journal"
            try:
                fd = open_private(path, os.O_RDWR | os.O_EXCL)
                break
            except FileExistsError:
                number += 1
        try:
            os.ftruncate(fd, capacity * SLOT_BYTES)
            memory = mmap.mmap(fd, capacity * SLOT_BYTES)
        finally:
            os.close(fd)
        journal = cls(path, memory, capacity)
        journal._write(0, _KIND.pack(_HEADER, boot if boot is not None else boot_id()))
        return journal

    @property
    def number(self) -> int:
        match = _NAME.match(self.path.name)
        assert match is not None
        return int(match.group(1))

    @property
    def full(self) -> bool:
        return not self._free and self._next >= self._capacity

    @property
    def in_use(self) -> int:
        """Slots holding a lease or a request (the header aside)."""
        return len(self._requests) + len(self._leases)

    def lease_held(self, lease_id: str) -> bool:
        """Record a lease this process holds; False when the journal is full (give the lease back)."""
        slot = self._take()
        if slot is None:
            return False
        self._write(slot, _KIND.pack(_LEASE, uuid.UUID(lease_id).bytes))
        self._leases[lease_id] = slot
        return True

    def lease_returned(self, lease_id: str) -> None:
        """Control took the lease back."""
        slot = self._leases.pop(lease_id, None)
        if slot is not None:
            self._release(slot)

    def admitted(self, request_id: str, leased: LeasedReservation) -> bool:
        """Record a request admitted from a lease, before it is forwarded; False when the journal is full."""
        slot = self._take()
        if slot is None:
            return False
        self._write(slot, _KIND.pack(_REQUEST, uuid.UUID(request_id).bytes) + encode_leased(leased))
        self._requests[request_id] = slot
        return True

    def settled(self, request_ids: Iterable[str]) -> None:
        """Control took these requests' settles, or the spool holds them durably."""
        for request_id in request_ids:
            slot = self._requests.pop(request_id, None)
            if slot is not None:
                self._release(slot)

    def close(self) -> None:
        """Unmap; remove the file when it names nothing (else the next process recovers it)."""
        left = self.in_use
        self._memory.close()
        if left:
            _log.warning("lease journal %s keeps %d entr(y/ies) for the next start to recover", self.path, left)
        else:
            self.path.unlink(missing_ok=True)

    def _take(self) -> int | None:
        if self._free:
            return self._free.pop()
        if self._next >= self._capacity:
            return None
        self._next += 1
        return self._next - 1

    def _release(self, slot: int) -> None:
        erase_frame(self._memory, slot * SLOT_BYTES)
        self._free.append(slot)

    def _write(self, slot: int, payload: bytes) -> None:
        store_frame(self._memory, slot * SLOT_BYTES, SLOT_BYTES, payload)  # the checksum last: whole or free


def read_journal(path: Path, current_boot: bytes) -> list[RecoveredLease]:
    """What a dead process's journal names, per lease: its lost requests, and whether control may
    release the rest (the journal was written during this boot, so no store in it was lost).

    A journal written in an earlier version's slot layout names nothing (see the module docstring).
    """
    data = path.read_bytes()
    payloads = [_slot_payload(data, start) for start in range(0, len(data) - SLOT_BYTES + 1, SLOT_BYTES)]
    header = payloads[0] if payloads else None
    written_boot = b""
    if header is not None and len(header) >= _KIND.size and header[0] == _HEADER:
        written_boot = _KIND.unpack_from(header)[1]
    else:
        _log.warning(
            "lease journal %s has no header this edge reads (left by an earlier version, or damaged): "
            "what its leases hold is left to control's sweeper",
            path.name,
        )
    leases: dict[str, list[tuple[str, LeasedReservation]]] = {}
    for payload in payloads[1:]:
        if payload is None or len(payload) < _KIND.size:  # free, or torn by a kill mid-store
            continue
        kind, first = _KIND.unpack_from(payload)
        if kind == _LEASE:
            leases.setdefault(str(uuid.UUID(bytes=first)), [])
        elif kind == _REQUEST and len(payload) >= _KIND.size + LEASED_BYTES:
            leased = decode_leased(payload, _KIND.size)
            leases.setdefault(leased.lease_id, []).append((str(uuid.UUID(bytes=first)), leased))
    complete = bool(current_boot) and written_boot == current_boot
    return [RecoveredLease(lease_id, lost, complete) for lease_id, lost in leases.items()]


def _slot_payload(data: bytes, start: int) -> bytes | None:
    frame = read_frame(data[start : start + SLOT_BYTES])
    return frame[0] if frame is not None else None
