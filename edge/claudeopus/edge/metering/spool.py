"""A durable local spool for settles that could not reach control, replayed when it is back.

Only a settle's metadata is written: request id, token counts, status, source, HTTP status,
latency and, for a request admitted from a lease, its reservation. The record format has no
field that could hold text, so no prompt, output or key can ever land here.

Files in the spool directory (``CLAUDEOPUS_SPOOL_DIR``)::

    LOCK                          flock'd by the one edge process that uses the directory
    settles-000000000001.log      segments: appended to in order, never rewritten,
    settles-000000000002.log      removed once every record in them was replayed

A process never appends to a segment that an earlier one left behind (its last record may be
torn); it replays those first.

Each record is one frame of :mod:`claudeopus.edge.metering.records` holding a settle's payload:
55 bytes on disk, 104 for a request admitted from a lease (its reservation travels with it).

Reading a segment stops at the first frame that is cut short, fails its checksum or holds no
settle this edge knows: after a crash that is a torn last record, and it is ignored (with a
warning naming the byte count).

Appends are group-committed: records appended within a few milliseconds of each other (and
any that arrive while the previous group is being written) go out in one ``write`` and one
``fsync``, in a worker thread so the event loop never blocks on the disk; ``append`` returns
once its record is durable.

Example::

    spool = await Spool.open("spool", max_bytes=64 * 1024 * 1024)
    await spool.append(Settlement(request_id, Outcome(12, 40, status, source, 200), latency_ns))
    await spool.replay(send_to_control, max_batch=256)  # oldest first; each segment removed once replayed
    await spool.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from claudeopus.edge.metering.records import decode_settlement, encode_frame, encode_settlement, read_frame
from claudeopus.edge.metering.types import Settlement
from claudeopus.private_files import open_private, private_directory

__all__ = ["Spool", "SpoolError", "decode_records", "encode_record", "read_spool"]

_log = logging.getLogger(__name__)

GROUP_WINDOW_SECONDS = 0.002
SEGMENT_BYTES = 1024 * 1024
_SEGMENT_NAME = re.compile(r"^settles-(\d{12})\.log$")


class SpoolError(Exception):
    """The spool cannot be opened or written (directory in use, disk full, closed)."""


def encode_record(settle: Settlement) -> bytes:
    """One framed record; counts are clamped to what control stores (``ValueError`` for a non-UUID id)."""
    return encode_frame(encode_settlement(settle))


def decode_records(data: bytes) -> tuple[list[Settlement], int]:
    """The whole records at the start of ``data``, and how many bytes they take; the rest is ignored."""
    found: list[Settlement] = []
    used = 0
    while (frame := read_frame(data, used)) is not None:
        payload, end = frame
        settle = decode_settlement(payload)
        if settle is None:
            break
        found.append(settle)
        used = end
    return found, used


def read_spool(directory: str | os.PathLike[str]) -> list[Settlement]:
    """Every record in a spool directory, oldest first (for operators and tests; takes no lock)."""
    return [record for _, path in _segment_files(Path(directory)) for record in _read_segment(path)]


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(directory):
        match = _SEGMENT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _read_segment(path: Path) -> list[Settlement]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed by hand: nothing left to replay
        return []
    records, used = decode_records(data)
    if used < len(data):
        _log.warning(
            "usage spool %s: ignored %d bytes after %d whole records (a record torn by a crash)",
            path.name,
            len(data) - used,
            len(records),
        )
    return records


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int
    fd: int = -1
    # Records of this segment already replayed by this process (a failed pass resumes after them).
    replayed: int = 0


def _lock_directory(directory: Path) -> int:
    private_directory(directory)
    fd = open_private(directory / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(
            f"the usage spool {directory} is in use by another edge process; "
            "give each edge its own CLAUDEOPUS_SPOOL_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _create_segment(directory: Path, seq: int) -> _Segment:
    path = directory / f"settles-{seq:012d}.log"
    fd = open_private(path, os.O_WRONLY | os.O_EXCL | os.O_APPEND)
    _fsync_directory(directory)  # the new name itself must survive a crash
    return _Segment(seq, path, 0, fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


class Spool:
    """The append-only spool of one edge process; see the module docstring for the format.

    ``max_bytes`` bounds it for admission: once the spool holds that much, :attr:`full` is true
    and the edge refuses new completions (503) until replay has made room. Settles of requests
    already admitted are still written, so the spool can pass ``max_bytes`` by one record
    (55 bytes, 104 for a request admitted from a lease) per request that was in flight.
    """

    def __init__(
        self,
        directory: Path,
        lock_fd: int,
        segments: list[_Segment],
        *,
        max_bytes: int,
        group_window: float,
        segment_bytes: int,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsyncs = 0
        self._lock_fd = lock_fd
        self._closed_segments = segments
        self._closed_bytes = sum(s.size for s in segments)
        self._next_seq = max((s.seq for s in segments), default=0) + 1
        self._active: _Segment | None = None
        self._group_window = group_window
        self._segment_bytes = segment_bytes
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._committing = 0  # records of the group being written now
        self._queued = asyncio.Event()
        self._written = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        group_window: float = GROUP_WINDOW_SECONDS,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> Spool:
        """Lock ``directory`` (created if missing) and pick up what an earlier process left there."""

        def prepare() -> tuple[Path, int, list[_Segment]]:
            path = Path(directory).resolve()
            lock_fd = _lock_directory(path)
            return path, lock_fd, [_Segment(seq, file, file.stat().st_size) for seq, file in _segment_files(path)]

        path, lock_fd, segments = await asyncio.to_thread(prepare)
        spool = cls(
            path, lock_fd, segments, max_bytes=max_bytes, group_window=group_window, segment_bytes=segment_bytes
        )
        spool._writer = asyncio.get_running_loop().create_task(spool._write_groups())
        if segments:
            _log.warning(
                "usage spool %s: %d segment(s), %d bytes of settles left by an earlier run; replaying them",
                path,
                len(segments),
                spool.size_bytes,
            )
        else:
            _log.info("usage spool %s ready (empty)", path)
        return spool

    @property
    def size_bytes(self) -> int:
        """Bytes of records on disk, not yet replayed."""
        return self._closed_bytes + (self._active.size if self._active is not None else 0)

    @property
    def full(self) -> bool:
        return self.size_bytes >= self.max_bytes

    @property
    def has_records(self) -> bool:
        """Records are on disk waiting for replay."""
        return self.size_bytes > 0 or bool(self._closed_segments)

    @property
    def empty(self) -> bool:
        """Nothing on disk and nothing being written."""
        return not self.has_records and not self._queue and not self._committing

    async def append(self, settle: Settlement) -> None:
        """Write one record; returns once it is on disk (raises :class:`SpoolError` if it could not be)."""
        if self._closing:
            raise SpoolError("the usage spool is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((encode_record(settle), future))
        self._queued.set()
        await future

    async def wait_for_records(self) -> None:
        """Return once records are on disk (at once if they already are)."""
        while not self.has_records:
            self._written.clear()
            await self._written.wait()

    async def replay(self, handle: Callable[[Sequence[Settlement]], Awaitable[int]], *, max_batch: int) -> int:
        """Pass the records on disk to ``handle`` oldest first, in batches; returns how many were handled.

        A batch holds at most ``max_batch`` records, all of one segment. ``handle`` answers how
        many of its batch, from the first, it is done with; fewer than all ends the pass there,
        and so does an exception from ``handle`` (then none of that batch counts as done). What
        was not handled stays spooled, and the next pass resumes with it. A segment is removed
        once all its records were handled. After a crash a segment may be replayed again from
        its start: ``handle`` must be idempotent.
        """
        handled = 0
        while True:
            async with self._commit_lock:
                if not self._closed_segments:  # caught up: now the segment being written
                    self._seal_active()
                if not self._closed_segments:
                    return handled
                segment = self._closed_segments[0]
            records = await asyncio.to_thread(_read_segment, segment.path)
            while segment.replayed < len(records):
                batch = records[segment.replayed : segment.replayed + max_batch]
                done = await handle(batch)
                segment.replayed += done
                handled += done
                if done < len(batch):
                    return handled
            await asyncio.to_thread(segment.path.unlink, True)
            self._closed_segments.remove(segment)
            self._closed_bytes -= segment.size

    async def aclose(self) -> None:
        """Write what is queued, then close the files and release the directory."""
        if self._closing:
            return
        self._closing = True
        self._queued.set()
        if self._writer is not None:
            await self._writer
        async with self._commit_lock:
            self._seal_active()
        os.close(self._lock_fd)

    async def _write_groups(self) -> None:
        while True:
            await self._queued.wait()
            if self._group_window and not self._closing:
                await asyncio.sleep(self._group_window)  # let the group gather
            self._queued.clear()
            group, self._queue = self._queue, []
            if group:
                self._committing = len(group)
                try:
                    await self._commit(group)
                finally:
                    self._committing = 0
            if self._closing and not self._queue:
                return

    async def _commit(self, group: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        data = b"".join(frame for frame, _ in group)
        async with self._commit_lock:
            try:
                if self._active is None:
                    self._active = await asyncio.to_thread(_create_segment, self.directory, self._next_seq)
                    self._next_seq += 1
                await asyncio.to_thread(_write_durably, self._active.fd, data)
            except OSError as error:
                self._after_failed_write()
                failure = SpoolError(f"the usage spool could not be written: {error.strerror or type(error).__name__}")
                for _, future in group:
                    if not future.done():
                        future.set_exception(failure)
                return
            self._active.size += len(data)
            self.fsyncs += 1
            if self._active.size >= self._segment_bytes:
                self._seal_active()
        for _, future in group:
            if not future.done():
                future.set_result(None)
        self._written.set()

    def _after_failed_write(self) -> None:
        """Cut off whatever part of the failed group reached the file, and start a new segment next time."""
        if self._active is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._active.fd, self._active.size)
        self._seal_active()

    def _seal_active(self) -> None:
        segment, self._active = self._active, None
        if segment is None:
            return
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = -1
        self._closed_segments.append(segment)
        self._closed_bytes += segment.size
