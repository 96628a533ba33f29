"""Replay: spooled settles go to control's BatchSettle in batches; a record leaves only once control is done with it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from claudeopus.client import ClaudeOpusError, FailedPreconditionError, NotFoundError, UnavailableError
from claudeopus.edge.metering.replay import MAX_BATCH, Replayer
from claudeopus.edge.metering.spool import Spool, read_spool
from claudeopus.edge.metering.types import Outcome, Settlement, UsageSource, UsageStatus
from claudeopus.gateway_limits import MAX_SETTLES_PER_CALL
from tests.support.waiting import until


def rid(n: int) -> str:
    return str(uuid.UUID(int=n))


def settle(n: int) -> Settlement:
    return Settlement(rid(n), Outcome(n, 2 * n, UsageStatus.SUCCEEDED, UsageSource.REPORTED, 200), n)


class BatchControl:
    """Control's BatchSettle: fails as a whole with ``down``, else answers each settle (``refuse`` by request id)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.taken: list[str] = []
        self.refuse: dict[str, ClaudeOpusError] = {}
        self.down: Exception | None = None

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        self.calls.append([settle.request_id for settle in settles])
        if self.down is not None:
            raise self.down
        answers = [self.refuse.get(settle.request_id) for settle in settles]
        self.taken.extend(settle.request_id for settle, answer in zip(settles, answers, strict=True) if answer is None)
        return answers


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    yield spool
    await spool.aclose()


def test_a_batch_stays_within_what_control_takes_per_call() -> None:
    assert 1 < MAX_BATCH <= MAX_SETTLES_PER_CALL


async def test_spooled_settles_go_oldest_first_in_batches_of_at_most_max_batch(spool: Spool, tmp_path: Path) -> None:
    for n in range(1, 11):
        await spool.append(settle(n))
    control = BatchControl()
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.02, max_batch=4)  # type: ignore[arg-type]
    replayer.start()
    await until(lambda: spool.empty)
    await replayer.aclose()
    assert [len(call) for call in control.calls] == [4, 4, 2]
    assert control.taken == [rid(n) for n in range(1, 11)]
    assert replayer.replayed == 10 and read_spool(tmp_path) == []


async def test_a_record_control_did_not_take_stays_with_those_after_it_until_it_is_taken(
    spool: Spool, tmp_path: Path
) -> None:
    for n in range(1, 7):
        await spool.append(settle(n))
    control = BatchControl()
    control.refuse[rid(3)] = ClaudeOpusError(grpc.StatusCode.INTERNAL, "database restarting")
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.02)  # type: ignore[arg-type]
    replayer.start()
    await until(lambda: len(control.calls) >= 3)
    assert control.calls[0] == [rid(n) for n in range(1, 7)]
    assert control.calls[1] == control.calls[2] == [rid(n) for n in range(3, 7)], "resumed at the one not taken"
    assert read_spool(tmp_path) == [settle(n) for n in range(1, 7)], "its segment is kept until all are done"
    del control.refuse[rid(3)]
    await until(lambda: spool.empty)
    await replayer.aclose()
    assert set(control.taken) == {rid(n) for n in range(1, 7)} and control.taken[-4:] == [rid(n) for n in range(3, 7)]
    assert replayer.replayed == 6 and read_spool(tmp_path) == []


@pytest.mark.parametrize(
    "failure",
    [
        UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused"),
        RuntimeError("bug"),
        NotFoundError(grpc.StatusCode.NOT_FOUND, "no such service"),
    ],
    ids=["unavailable", "unexpected", "refused-as-a-whole"],
)
async def test_a_call_that_fails_as_a_whole_keeps_every_record(
    spool: Spool, tmp_path: Path, failure: Exception
) -> None:
    for n in range(1, 4):
        await spool.append(settle(n))
    control = BatchControl()
    control.down = failure
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.02)  # type: ignore[arg-type]
    replayer.start()
    await until(lambda: len(control.calls) >= 3)
    assert read_spool(tmp_path) == [settle(n) for n in range(1, 4)] and replayer.dropped == 0
    control.down = None
    await until(lambda: spool.empty)
    await replayer.aclose()
    assert control.taken == [rid(n) for n in range(1, 4)]


async def test_records_refused_for_good_are_dropped_with_a_line_that_names_no_content(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(1, 5):
        await spool.append(settle(n))
    control = BatchControl()
    control.refuse[rid(2)] = NotFoundError(grpc.StatusCode.NOT_FOUND, "no such", "RESERVATION_NOT_FOUND")
    control.refuse[rid(4)] = FailedPreconditionError(grpc.StatusCode.FAILED_PRECONDITION, "closed")
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.02)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="claudeopus.edge.metering.replay"):
        replayer.start()
        await until(lambda: spool.empty)
    await replayer.aclose()
    assert control.calls == [[rid(n) for n in range(1, 5)]], "one call, not retried"
    assert control.taken == [rid(1), rid(3)] and (replayer.replayed, replayer.dropped) == (2, 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"spooled settle of request {rid(2)} dropped: control answered NOT_FOUND RESERVATION_NOT_FOUND",
        f"spooled settle of request {rid(4)} dropped: control answered FAILED_PRECONDITION (no reason)",
    ]


async def test_closing_stops_the_task_and_leaves_the_records_for_the_next_start(spool: Spool, tmp_path: Path) -> None:
    await spool.append(settle(1))
    control = BatchControl()
    control.down = UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    replayer = Replayer(control, spool, min_delay=0.01, max_delay=0.02)  # type: ignore[arg-type]
    replayer.start()
    await until(lambda: len(control.calls) >= 2)
    await asyncio.wait_for(replayer.aclose(), 5)
    calls = len(control.calls)
    await asyncio.sleep(0.05)
    assert len(control.calls) == calls, "no call after aclose"
    assert read_spool(tmp_path) == [settle(1)]
