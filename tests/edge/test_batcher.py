"""The owned batcher under authorize and settle: order, batch size, entries given up, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from claudeopus.edge.metering.batcher import Batcher


async def test_entries_go_in_order_in_batches_of_at_most_max_batch_and_stale_ones_are_dropped() -> None:
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(batch: list[int]) -> None:
        sent.append(batch)
        await gate.wait()

    batcher = Batcher(send, name="test", max_batch=2, stale=lambda n: n < 0)
    batcher.submit(1)
    await asyncio.sleep(0)  # a quiet batcher sends the first entry at once, alone
    for n in (2, -1, 3, 4):
        batcher.submit(n)
    assert batcher.pending == 5
    gate.set()
    for _ in range(100):
        if not batcher.pending:
            break
        await asyncio.sleep(0.01)
    assert sent == [[1], [2, 3], [4]], "the entry given up was never sent, nor counted in a batch"
    assert await batcher.aclose() == []


async def test_shutdown_waits_out_the_grace_period_then_hands_back_what_was_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("claudeopus.edge.tasks.SHUTDOWN_GRACE_SECONDS", 0.1)
    sent: list[list[int]] = []

    async def send(batch: list[int]) -> None:
        sent.append(batch)
        await asyncio.Event().wait()  # never answers

    batcher = Batcher(send, name="test", max_batch=1, linger=30)
    for n in (1, 2, 3):
        batcher.submit(n)
    await asyncio.sleep(0.01)
    assert await batcher.aclose() == [2, 3]
    assert sent == [[1]] and batcher.pending == 0 and batcher.closing
