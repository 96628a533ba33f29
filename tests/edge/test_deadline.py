"""A deadline on a block of awaits behaves as asyncio.timeout: TimeoutError when it passes, nothing else changed."""

from __future__ import annotations

import asyncio
import time

import pytest

from claudeopus.edge.deadline import Deadline


async def test_a_block_that_ends_in_time_is_untouched() -> None:
    async with Deadline(time.perf_counter() + 1.0):
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # no cancellation left pending on the task


async def test_a_block_still_running_at_the_deadline_raises_timeout_error() -> None:
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with Deadline(started + 0.05):
            await asyncio.sleep(10)
    assert 0.04 <= time.perf_counter() - started < 1.0
    await asyncio.sleep(0)  # the task is not left cancelled
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_already_passed_stops_the_block_at_its_first_await() -> None:
    reached = []

    async def guarded() -> None:
        async with Deadline(time.perf_counter() - 1.0):
            reached.append("before")
            await asyncio.sleep(1)
            reached.append("after")

    with pytest.raises(TimeoutError):
        await guarded()
    assert reached == ["before"]


async def test_a_cancellation_from_elsewhere_passes_through() -> None:
    entered = asyncio.Event()

    async def guarded() -> None:
        async with Deadline(time.perf_counter() + 10.0):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_other_errors_leave_the_block_unchanged() -> None:
    with pytest.raises(KeyError):
        async with Deadline(time.perf_counter() + 1.0):
            raise KeyError("x")
