"""The usage spool: framing, torn tails, group commit, order, bounds, compaction, one owner."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from claudeopus.edge.metering import spool as spool_module
from claudeopus.edge.metering.spool import Spool, SpoolError, decode_records, encode_record, read_spool
from claudeopus.edge.metering.types import LeasedReservation, Outcome, Settlement

RECORD_BYTES = 55  # 8 bytes of framing, 47 of payload
LEASED_RECORD_BYTES = 104  # and 49 more for a request admitted from a lease


def settle(n: int = 0, **fields: int) -> Settlement:
    values = {"input_tokens": 10 + n, "output_tokens": 20 + n, "status": 1, "source": 1, "http_status": 200}
    values.update(fields)
    return spooled(str(uuid.UUID(int=n + 1)), latency_ns=1_000_000 * n, **values)


def spooled(
    request_id: str,
    input_tokens: int,
    output_tokens: int,
    status: int,
    source: int,
    http_status: int,
    latency_ns: int,
    leased: LeasedReservation | None = None,
) -> Settlement:
    outcome = Outcome(input_tokens, output_tokens, status, source, http_status)  # type: ignore[arg-type]
    return Settlement(request_id, outcome, latency_ns, leased)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("settles-*.log"))


async def replay_all(spool: Spool, max_batch: int = 3) -> list[Settlement]:
    seen: list[Settlement] = []

    async def handle(batch: Sequence[Settlement]) -> int:
        assert 0 < len(batch) <= max_batch
        seen.extend(batch)
        return len(batch)

    await spool.replay(handle, max_batch=max_batch)
    return seen


def test_a_record_round_trips_and_is_fixed_size() -> None:
    record = settle(7, status=3, source=2, http_status=499)
    frame = encode_record(record)
    assert len(frame) == RECORD_BYTES
    assert decode_records(frame) == ([record], RECORD_BYTES)


def test_a_leased_settle_round_trips_with_its_reservation() -> None:
    leased = LeasedReservation(str(uuid.uuid4()), 120, 64, 99, True, 1_800_000_000_123_456_789)
    record = spooled(str(uuid.uuid4()), 5, 7, 1, 1, 200, 42, leased)
    frame = encode_record(record)
    assert len(frame) == LEASED_RECORD_BYTES
    plain = encode_record(settle(3))
    assert decode_records(frame + plain) == ([record, settle(3)], LEASED_RECORD_BYTES + RECORD_BYTES)
    torn = frame[:-1]
    assert decode_records(torn) == ([], 0), "a torn leased record is ignored like any other"


def test_counts_are_clamped_to_what_control_stores() -> None:
    huge = spooled(str(uuid.uuid4()), 2**70, -5, 70_000, 1, 200, 2**64)
    [decoded], _ = decode_records(encode_record(huge))
    outcome = decoded.outcome
    assert (outcome.input_tokens, outcome.output_tokens, outcome.status, decoded.latency_ns) == (
        2**63 - 1,
        0,
        2**16 - 1,
        2**63 - 1,
    )


def test_only_uuid_request_ids_are_accepted() -> None:
    with pytest.raises(ValueError, match="UUID"):
        encode_record(spooled("some prompt text", 1, 1, 1, 1, 200, 1))


@pytest.mark.parametrize("cut", range(1, RECORD_BYTES))
def test_a_torn_last_record_is_ignored(cut: int) -> None:
    whole = encode_record(settle(1)) + encode_record(settle(2))
    records, used = decode_records(whole + encode_record(settle(3))[:cut])
    assert records == [settle(1), settle(2)]
    assert used == len(whole)


@pytest.mark.parametrize("offset", [0, 3, 4, 7, 8, 30, RECORD_BYTES - 1])
def test_a_flipped_bit_ends_the_readable_part(offset: int) -> None:
    damaged = bytearray(encode_record(settle(2)))
    damaged[offset] ^= 0x10
    records, used = decode_records(encode_record(settle(1)) + bytes(damaged) + encode_record(settle(3)))
    assert records == [settle(1)]
    assert used == RECORD_BYTES


async def test_appends_are_durable_in_order_and_read_back(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        for n in range(5):
            await spool.append(settle(n))
        assert read_spool(tmp_path) == [settle(n) for n in range(5)]
        assert spool.size_bytes == 5 * RECORD_BYTES and spool.has_records and not spool.empty
    finally:
        await spool.aclose()


async def test_the_spool_directory_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spool = await Spool.open(tmp_path / "a" / "spool", max_bytes=1 << 20)
        try:
            await spool.append(settle(1))
        finally:
            await spool.aclose()
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "spool"):
        assert directory.stat().st_mode & 0o777 == 0o700
    files = list((tmp_path / "a" / "spool").iterdir())
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files), [oct(p.stat().st_mode) for p in files]


async def test_concurrent_appends_share_one_fsync_per_group(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20, group_window=0.005)
    try:
        await asyncio.gather(*(spool.append(settle(n)) for n in range(200)))
        assert spool.fsyncs <= 3, f"{spool.fsyncs} fsyncs for one burst"
        assert read_spool(tmp_path) == [settle(n) for n in range(200)], "in the order appended"
        before = spool.fsyncs
        await spool.append(settle(500))
        assert spool.fsyncs == before + 1, "a lone append is written at once, not held for company"
    finally:
        await spool.aclose()


async def test_every_group_is_fsynced_before_append_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        await spool.append(settle(1))
        assert len(synced) == 2, "append returned before the new segment's name and its record were synced"
        await asyncio.gather(*(spool.append(settle(n)) for n in range(2, 50)))
        assert spool.fsyncs < 10 and len(read_spool(tmp_path)) == 49
    finally:
        await spool.aclose()


async def test_a_group_being_written_counts_as_spooled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_write = spool_module._write_durably

    def slow_write(fd: int, data: bytes) -> None:
        gate.wait(5)
        real_write(fd, data)

    monkeypatch.setattr(spool_module, "_write_durably", slow_write)
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        appending = asyncio.ensure_future(spool.append(settle(1)))
        await asyncio.sleep(0.05)  # the writer has taken the group and waits on the disk
        assert not spool.empty, "a settle on its way to disk keeps later ones behind it"
        gate.set()
        await appending
        assert spool.has_records
    finally:
        gate.set()
        await spool.aclose()


async def test_replay_hands_over_in_order_across_segments_and_compacts(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20, segment_bytes=4 * RECORD_BYTES)
    try:
        for n in range(10):
            await spool.append(settle(n))
        assert len(segments(tmp_path)) == 3, "a segment is closed once it reaches segment_bytes"
        assert await replay_all(spool) == [settle(n) for n in range(10)]
        assert segments(tmp_path) == [], "replayed segments are removed"
        assert spool.size_bytes == 0 and spool.empty
        await spool.append(settle(10))
        assert await replay_all(spool) == [settle(10)], "nothing is handed over twice"
        assert segments(tmp_path) == []
    finally:
        await spool.aclose()


async def test_a_failed_handler_stops_the_pass_and_the_next_resumes_there(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    seen: list[int] = []

    async def flaky(batch: Sequence[Settlement]) -> int:
        [record] = batch
        if record.outcome.input_tokens == 13:
            seen.append(-1)
            raise ConnectionError("control went away")
        seen.append(record.outcome.input_tokens)
        return 1

    try:
        for n in range(6):
            await spool.append(settle(n))
        with pytest.raises(ConnectionError):
            await spool.replay(flaky, max_batch=1)
        assert seen == [10, 11, 12, -1]
        assert spool.has_records and read_spool(tmp_path) == [settle(n) for n in range(6)], "kept until replayed"
        seen.clear()

        async def steady(batch: Sequence[Settlement]) -> int:
            seen.extend(record.outcome.input_tokens for record in batch)
            return len(batch)

        assert await spool.replay(steady, max_batch=2) == 3
        assert seen == [13, 14, 15], "resumed at the record that failed"
        assert segments(tmp_path) == []
    finally:
        await spool.aclose()


async def test_a_handler_that_took_part_of_a_batch_ends_the_pass_after_that_part(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20, segment_bytes=6 * RECORD_BYTES)
    batches: list[list[int]] = []

    async def takes_one_of_the_second_batch(batch: Sequence[Settlement]) -> int:
        batches.append([record.outcome.input_tokens for record in batch])
        return 1 if len(batches) == 2 else len(batch)

    try:
        for n in range(10):
            await spool.append(settle(n))
        assert await spool.replay(takes_one_of_the_second_batch, max_batch=4) == 5
        assert batches == [[10, 11, 12, 13], [14, 15]], "at most max_batch, never across two segments"
        assert len(segments(tmp_path)) == 2, "the first segment is kept: one of its records is left"
        assert await replay_all(spool) == [settle(n) for n in range(5, 10)], "resumed after the part taken"
        assert segments(tmp_path) == []
    finally:
        await spool.aclose()


async def test_failing_passes_do_not_split_the_spool_into_many_files(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)

    async def down(batch: Sequence[Settlement]) -> int:
        raise ConnectionError("control is down")

    try:
        for n in range(20):
            await spool.append(settle(n))
            with pytest.raises(ConnectionError):
                await spool.replay(down, max_batch=8)
        assert len(segments(tmp_path)) == 2, "the first one sealed for replay, the rest still appended to one"
        assert await replay_all(spool) == [settle(n) for n in range(20)]
        assert segments(tmp_path) == []
    finally:
        await spool.aclose()


async def test_what_a_killed_process_left_is_replayed_by_the_next_torn_tail_and_all(tmp_path: Path) -> None:
    first = await Spool.open(tmp_path, max_bytes=1 << 20)
    for n in range(4):
        await first.append(settle(n))
    await first.aclose()
    [left] = segments(tmp_path)
    with left.open("ab") as file:  # a crash in the middle of writing the fifth record
        file.write(encode_record(settle(4))[:30])

    second = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        assert second.has_records and second.size_bytes == 4 * RECORD_BYTES + 30
        await second.append(settle(5))
        assert len(segments(tmp_path)) == 2, "never appends behind a torn tail: a new segment"
        assert await replay_all(second) == [settle(n) for n in (0, 1, 2, 3, 5)]
        assert segments(tmp_path) == []
    finally:
        await second.aclose()


async def test_full_at_max_bytes_while_admitted_settles_are_still_written(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=3 * RECORD_BYTES)
    try:
        for n in range(2):
            await spool.append(settle(n))
        assert not spool.full
        await spool.append(settle(2))
        assert spool.full
        await spool.append(settle(3))  # a request admitted before it filled up still keeps its usage
        assert len(read_spool(tmp_path)) == 4
        await replay_all(spool)
        assert not spool.full and spool.size_bytes == 0
    finally:
        await spool.aclose()


async def test_one_edge_per_spool_directory(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        with pytest.raises(SpoolError, match="in use by another edge"):
            await Spool.open(tmp_path, max_bytes=1 << 20)
    finally:
        await spool.aclose()
    again = await Spool.open(tmp_path, max_bytes=1 << 20)
    await again.aclose()


async def test_a_failed_write_fails_the_group_and_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        await spool.append(settle(1))
        real_write = os.write

        def short_then_full(fd: int, data: bytes | memoryview) -> int:
            real_write(fd, bytes(data[:10]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(spool_module.os, "write", short_then_full)
        with pytest.raises(SpoolError, match="No space left"):
            await spool.append(settle(2))
        monkeypatch.setattr(spool_module.os, "write", real_write)
        await spool.append(settle(3))
        assert read_spool(tmp_path) == [settle(1), settle(3)]
        assert [p.stat().st_size for p in segments(tmp_path)] == [RECORD_BYTES, RECORD_BYTES]
    finally:
        await spool.aclose()


async def test_closing_writes_what_is_queued_and_refuses_more(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20, group_window=0.05)
    pending = [asyncio.ensure_future(spool.append(settle(n))) for n in range(3)]
    await asyncio.sleep(0)
    await spool.aclose()
    await asyncio.gather(*pending)
    assert read_spool(tmp_path) == [settle(n) for n in range(3)]
    with pytest.raises(SpoolError, match="closed"):
        await spool.append(settle(9))


async def test_the_files_hold_metadata_only(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    try:
        await spool.append(settle(1))
    finally:
        await spool.aclose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"prompt" not in raw and b"sk-" not in raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", "settles-000000000001.log"]
