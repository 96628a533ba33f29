"""Settler and Replayer against a fake control: direct settles, the spool while control is away, replay."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from claudeopus.client import ClaudeOpusError, InvalidArgumentError, NotFoundError, UnavailableError
from claudeopus.edge.metering.grpc_control import GrpcControl
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.replay import Replayer
from claudeopus.edge.metering.settler import Settler
from claudeopus.edge.metering.spool import Spool, read_spool
from claudeopus.edge.metering.types import Outcome, Settlement
from claudeopus.v1 import usage_pb2
from tests.support.fake_control import FakeControl

SUCCEEDED = usage_pb2.USAGE_STATUS_SUCCEEDED
REPORTED = usage_pb2.USAGE_SOURCE_REPORTED


def outcome(tokens: int) -> Outcome:
    return Outcome(input_tokens=tokens, output_tokens=2 * tokens, status=SUCCEEDED, source=REPORTED, http_status=200)


def rid(n: int) -> str:
    return str(uuid.UUID(int=n))


class SettlingControl(FakeControl):
    """Settle succeeds while ``up``; ``refuse`` maps request ids to the error control answers for them."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.settled: list[tuple[str, int]] = []
        self.attempts = 0
        self.refuse: dict[str, ClaudeOpusError] = {}
        self.batches: list[int] = []

    async def take(self, settle: Settlement) -> None:
        """One settle of a batch: control's answer for it."""
        request_id, outcome = settle.request_id, settle.outcome
        self.attempts += 1
        if not self.up:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if request_id in self.refuse:
            raise self.refuse[request_id]
        self.settled.append((request_id, outcome.input_tokens))

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        """Like control's BatchSettle: fails as a whole while down, else answers per settle."""
        self.batches.append(len(settles))
        if not self.up:
            self.attempts += 1
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        answers: list[ClaudeOpusError | None] = []
        for settle in settles:
            try:
                await self.take(settle)
                answers.append(None)
            except ClaudeOpusError as error:
                answers.append(error)
        return answers


async def until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def control() -> SettlingControl:
    return SettlingControl()


@pytest.fixture
async def settler(control: SettlingControl, tmp_path: Path) -> AsyncIterator[Settler]:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.05)
    replayer.start()
    settler = Settler(control, spool, replayer)
    yield settler
    await settler.aclose()


async def test_with_control_up_settles_go_straight_there(
    settler: Settler, control: SettlingControl, tmp_path: Path
) -> None:
    for n in range(1, 4):
        settler.submit(rid(n), outcome(n), time.perf_counter())
    await until(lambda: len(control.settled) == 3)
    assert sorted(control.settled) == [(rid(n), n) for n in range(1, 4)]
    assert list(tmp_path.glob("settles-*")) == [], "nothing touched the disk"


async def test_while_control_is_down_settles_are_spooled_then_replayed_in_order(
    settler: Settler, control: SettlingControl, tmp_path: Path
) -> None:
    control.up = False
    for n in range(1, 21):
        settler.submit(rid(n), outcome(n), time.perf_counter())
        await asyncio.sleep(0)
    await until(lambda: settler.pending == 0)
    assert [r.outcome.input_tokens for r in read_spool(tmp_path)] == list(range(1, 21))
    assert control.settled == []
    control.up = True
    await until(lambda: len(control.settled) == 20)
    assert control.settled == [(rid(n), n) for n in range(1, 21)], "replayed oldest first"
    await until(lambda: list(tmp_path.glob("settles-*")) == [])


async def test_a_batch_that_cannot_reach_control_tells_the_lease_book(control: SettlingControl, tmp_path: Path) -> None:
    told: list[str] = []

    class Told(LeaseBook):
        def drop_all(self) -> None:
            told.append("x")

    settler = Settler(control, await Spool.open(tmp_path, max_bytes=1 << 20), leases=Told(control, 1.0))
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await until(lambda: len(control.settled) == 1)
    assert told == [], "control answered"
    control.up = False
    settler.submit(rid(2), outcome(2), time.perf_counter())
    await until(lambda: settler.pending == 0)
    assert told == ["x"], "leases are dropped: requests fail closed until control is back"
    control.up = True
    await settler.aclose()


async def test_behind_a_backlog_new_settles_queue_up_instead_of_overtaking(
    control: SettlingControl, tmp_path: Path
) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    settler = Settler(control, spool)  # no replayer yet: the backlog stays
    control.up = False
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await until(lambda: settler.pending == 0)
    control.up = True
    settler.submit(rid(2), outcome(2), time.perf_counter())
    await until(lambda: settler.pending == 0)
    assert control.attempts == 1, "the second settle went behind the first, not to control"
    replayer = Replayer(control, spool, min_delay=0.01)
    replayer.start()
    await until(lambda: len(control.settled) == 2)
    assert control.settled == [(rid(1), 1), (rid(2), 2)]
    await replayer.aclose()
    await settler.aclose()


async def test_records_control_can_never_take_are_dropped_and_logged(
    settler: Settler, control: SettlingControl, caplog: pytest.LogCaptureFixture
) -> None:
    control.up = False
    for n in range(1, 5):
        settler.submit(rid(n), outcome(n), time.perf_counter())
        await asyncio.sleep(0)
    await until(lambda: settler.pending == 0)
    control.refuse[rid(2)] = NotFoundError(grpc.StatusCode.NOT_FOUND, "no such", "RESERVATION_NOT_FOUND")
    control.refuse[rid(3)] = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "bad", "FIELD_INVALID")
    with caplog.at_level(logging.WARNING, logger="claudeopus.edge.metering.replay"):
        control.up = True
        await until(lambda: len(control.settled) == 2)
        await asyncio.sleep(0.05)
    assert control.settled == [(rid(1), 1), (rid(4), 4)]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [
        f"spooled settle of request {rid(2)} dropped: control answered NOT_FOUND RESERVATION_NOT_FOUND",
        f"spooled settle of request {rid(3)} dropped: control answered INVALID_ARGUMENT FIELD_INVALID",
    ]
    assert control.attempts < 20, "not retried"


async def test_other_refusals_are_retried_until_control_takes_the_record(
    settler: Settler, control: SettlingControl
) -> None:
    control.up = False
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await until(lambda: settler.pending == 0)
    control.refuse[rid(1)] = ClaudeOpusError(grpc.StatusCode.INTERNAL, "database restarting")
    control.up = True
    await until(lambda: control.attempts >= 4)
    assert control.settled == []
    del control.refuse[rid(1)]
    await until(lambda: control.settled == [(rid(1), 1)])


async def test_a_permanent_refusal_of_a_direct_settle_is_logged_not_spooled(
    settler: Settler, control: SettlingControl, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    control.refuse[rid(1)] = NotFoundError(grpc.StatusCode.NOT_FOUND, "no such", "RESERVATION_NOT_FOUND")
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await until(lambda: settler.pending == 0)
    assert read_spool(tmp_path) == []
    assert any("refused: NOT_FOUND RESERVATION_NOT_FOUND" in r.getMessage() for r in caplog.records)


async def test_a_new_process_replays_what_the_last_one_spooled(tmp_path: Path) -> None:
    down = SettlingControl()
    down.up = False
    first = await Settler.start(down, tmp_path, 1 << 20)
    for n in range(1, 6):
        first.submit(rid(n), outcome(n), time.perf_counter())
    await first.aclose()  # control never came back: the records stay
    assert len(read_spool(tmp_path)) == 5

    up = SettlingControl()
    second = await Settler.start(up, tmp_path, 1 << 20)
    try:
        await until(lambda: len(up.settled) == 5)
        assert up.settled == [(rid(n), n) for n in range(1, 6)]
        await until(lambda: read_spool(tmp_path) == [])
    finally:
        await second.aclose()


# -- the real gRPC client: refused connections and a control that never answers ---------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and then never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture
def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("which", ["silent", "refused"])
async def test_a_settle_control_does_not_answer_in_time_is_spooled(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = request.getfixturevalue(f"{which}_port")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        control = GrpcControl(channel, "t" * 32, timeout=0.3)
        spool = await Spool.open(tmp_path, max_bytes=1 << 20)
        settler = Settler(control, spool)
        started = time.monotonic()
        settler.submit(rid(1), outcome(1), time.perf_counter())
        await until(lambda: settler.pending == 0)
        assert time.monotonic() - started < 2
        await settler.aclose()
    [record] = read_spool(tmp_path)
    assert (record.request_id, record.outcome.input_tokens, record.outcome.output_tokens) == (rid(1), 1, 2)


# -- batching ----------------------------------------------------------------------------------


class SlowControl(SettlingControl):
    """Each batch waits until the test opens ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        await self.gate.wait()
        return await super().settle_batch(settles)


async def test_settles_finished_while_a_batch_is_on_its_way_travel_together(tmp_path: Path) -> None:
    control = SlowControl()
    settler = Settler(control, await Spool.open(tmp_path, max_bytes=1 << 20), max_batch=4)
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await asyncio.sleep(0.01)  # the first batch is on its way, alone
    for n in range(2, 12):
        settler.submit(rid(n), outcome(n), time.perf_counter())
    assert settler.pending == 11
    control.gate.set()
    await until(lambda: settler.pending == 0)
    assert control.batches == [1, 4, 4, 2], "one waiting, then the rest in batches of at most max_batch"
    assert control.settled == [(rid(n), n) for n in range(1, 12)], "in the order they were made"
    await settler.aclose()


async def test_shutdown_spools_what_control_did_not_take_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("claudeopus.edge.tasks.SHUTDOWN_GRACE_SECONDS", 0.2)
    control = SlowControl()  # never answers
    settler = Settler(control, await Spool.open(tmp_path, max_bytes=1 << 20), max_batch=2)
    for n in range(1, 6):
        settler.submit(rid(n), outcome(n), time.perf_counter())
    await asyncio.sleep(0.01)
    await settler.aclose()
    assert sorted(r.outcome.input_tokens for r in read_spool(tmp_path)) == [1, 2, 3, 4, 5], "the batch in flight too"
    assert control.settled == []


async def test_settles_finishing_within_the_linger_travel_in_one_batch(tmp_path: Path) -> None:
    control = SettlingControl()
    settler = Settler(control, await Spool.open(tmp_path, max_bytes=1 << 20), max_batch=4, linger=0.3)
    started = time.monotonic()
    for n in range(1, 4):
        settler.submit(rid(n), outcome(n), time.perf_counter())
        await asyncio.sleep(0.02)
    await until(lambda: settler.pending == 0)
    assert control.batches == [3], "three settles 20 ms apart: one call"
    assert time.monotonic() - started >= 0.3, "the batch waited out its linger"

    # A whole batch does not wait: max_batch settles go at once.
    started = time.monotonic()
    for n in range(4, 8):
        settler.submit(rid(n), outcome(n), time.perf_counter())
    await until(lambda: settler.pending == 0)
    assert control.batches == [3, 4]
    assert time.monotonic() - started < 0.25
    assert control.settled == [(rid(n), n) for n in range(1, 8)]


async def test_shutdown_does_not_wait_out_the_linger(tmp_path: Path) -> None:
    control = SettlingControl()
    settler = Settler(control, await Spool.open(tmp_path, max_bytes=1 << 20), linger=30)
    settler.submit(rid(1), outcome(1), time.perf_counter())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await settler.aclose()
    assert time.monotonic() - started < 5
    assert control.settled == [(rid(1), 1)], "sent, not spooled"
    assert read_spool(tmp_path) == []
