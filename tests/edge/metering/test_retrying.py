"""The one backoff loop under replay and lease recovery: pauses, their growth and reset, and stopping."""

from __future__ import annotations

import asyncio

import pytest

from claudeopus.edge.metering.retrying import RetryingTask


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the loop takes, recorded instead of slept."""
    taken: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        taken.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("claudeopus.edge.metering.retrying.asyncio.sleep", sleep)
    return taken


async def test_failed_attempts_pause_twice_as_long_each_time_up_to_the_most(pauses: list[float]) -> None:
    retrying = RetryingTask(min_delay=0.05, max_delay=0.5)
    answers = iter([False] * 6 + [True, False, True])
    calls = 0

    async def attempt() -> bool:
        nonlocal calls
        calls += 1
        return next(answers)

    await retrying.until(attempt)
    assert calls == 7 and pauses == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    await retrying.until(attempt)
    assert calls == 9 and pauses[6:] == [0.05], "each until starts again from the least pause"


async def test_the_task_is_owned_waited_for_and_stopped() -> None:
    retrying = RetryingTask(min_delay=0.01, max_delay=0.02)
    await retrying.wait()  # never started: nothing to wait for
    done: list[str] = []

    async def work() -> None:
        async def twice() -> bool:
            done.append("try")
            return len(done) == 2

        await retrying.until(twice)

    retrying.start(work, name="test-work")
    await asyncio.wait_for(retrying.wait(), 5)
    assert done == ["try", "try"]
    await retrying.aclose()

    forever = RetryingTask(min_delay=0.01, max_delay=0.02)

    async def never_done() -> bool:
        return False

    async def stuck() -> None:
        await forever.until(never_done)

    forever.start(stuck, name="test-stuck")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(forever.aclose(), 5)
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "test-stuck"], "ended, not left running"
    await forever.aclose()  # twice is fine
