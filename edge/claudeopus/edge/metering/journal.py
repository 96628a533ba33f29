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

Slots, 96 bytes each, little-endian; only ids and numbers, never text::

    u32 CRC-32 of the 92 bytes after it | u8 kind | ...
    kind 1 (slot 0, the header): 16 bytes boot id
    kind 2, a lease held:        16 bytes lease id
    kind 3, a request admitted:  16 bytes request id | 16 bytes lease id | u64 reserved input
                                 | u64 reserved output | u64 reserved cost | u8 stream
                                 | u64 reserve time in ns since 1970

A slot whose checksum does not match is free (freeing zeroes the checksum). A request's slot
is written before it is forwarded, so one torn by a kill mid-store was never forwarded.

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
import zlib
from collections.abc import Iterable
from pathlib import Path

from claudeopus.edge.metering.types import LeasedReservation, RecoveredLease
from claudeopus.private_files import open_private, private_directory

__all__ = ["LeaseJournal", "boot_id", "old_journals", "read_journal"]

_log = logging.getLogger(__name__)

SLOT_BYTES = 96
DEFAULT_SLOTS = 65_536  # at most this many leased requests in flight and leases held (6 MiB, sparse)
_HEADER, _LEASE, _REQUEST = 1, 2, 3
_CRC = struct.Struct("<I")
_KIND = struct.Struct("<B16s")
_REQUEST_SLOT = struct.Struct("<B16s16sQQQBQ")
_NAME = re.compile(r"^leases-(\d{12})\.journal$")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_FREE = b"\0" * _CRC.size


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
        payload = _REQUEST_SLOT.pack(
            _REQUEST,
            uuid.UUID(request_id).bytes,
            uuid.UUID(leased.lease_id).bytes,
            leased.estimated_input_tokens,
            leased.max_output_tokens,
            leased.reserved_cost_micros,
            leased.stream,
            leased.reserve_time_ns,
        )
        self._write(slot, payload)
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
        start = slot * SLOT_BYTES
        self._memory[start : start + _CRC.size] = _FREE
        self._free.append(slot)

    def _write(self, slot: int, payload: bytes) -> None:
        start = slot * SLOT_BYTES
        body = payload.ljust(SLOT_BYTES - _CRC.size, b"\0")
        self._memory[start + _CRC.size : start + SLOT_BYTES] = body
        _CRC.pack_into(self._memory, start, zlib.crc32(body))  # last: the slot counts only once whole


def read_journal(path: Path, current_boot: bytes) -> list[RecoveredLease]:
    """What a dead process's journal names, per lease: its lost requests, and whether control may
    release the rest (the journal was written during this boot, so no store in it was lost)."""
    data = path.read_bytes()
    leases: dict[str, list[tuple[str, LeasedReservation]]] = {}
    written_boot = b""
    for start in range(0, len(data) - SLOT_BYTES + 1, SLOT_BYTES):
        body = data[start + _CRC.size : start + SLOT_BYTES]
        (crc,) = _CRC.unpack_from(data, start)
        if zlib.crc32(body) != crc:  # free, or torn by a kill mid-store
            continue
        kind, first = _KIND.unpack_from(body)
        if kind == _HEADER and start == 0:
            written_boot = first
        elif kind == _LEASE:
            leases.setdefault(str(uuid.UUID(bytes=first)), [])
        elif kind == _REQUEST:
            _, request_id, lease_id, input_tokens, output_tokens, cost, stream, reserve_time_ns = (
                _REQUEST_SLOT.unpack_from(body)
            )
            lease = str(uuid.UUID(bytes=lease_id))
            leased = LeasedReservation(lease, input_tokens, output_tokens, cost, bool(stream), reserve_time_ns)
            leases.setdefault(lease, []).append((str(uuid.UUID(bytes=request_id)), leased))
    complete = bool(current_boot) and written_boot == current_boot
    return [RecoveredLease(lease_id, lost, complete) for lease_id, lost in leases.items()]
