"""A lease book's world for edge tests: a key, a completion, a lease, and a control that grants it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import orjson

from claudeopus.client import ClaudeOpusError
from claudeopus.edge.completions import CompletionRequest, parse_completion
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.types import Lease
from tests.support.fake_control import FakeControl

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def rid() -> str:
    return str(uuid.uuid4())


def completion(
    max_tokens: int | None = 10, model: str = "m", text: str = "hi", stream: bool = False, n: int | None = None
) -> CompletionRequest:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if n is not None:
        body["n"] = n
    return parse_completion(orjson.dumps(body))


def lease(requests: int = 3, **changes: object) -> Lease:
    one = completion()
    values: dict[str, object] = {
        "lease_id": "00000000-0000-4000-8000-000000000001",
        "ttl": 1.0,
        "unlimited": False,
        "input_tokens": one.input_token_bound * requests,
        "output_tokens": 10 * requests,
        "cost_micros": 0,
        "prices": None,
        "default_output_tokens": 64,
        "caps_output": True,
    }
    values.update(changes)
    return Lease(**values)  # type: ignore[arg-type]


class LeasingControl(FakeControl):
    def __init__(self, granted: Lease | ClaudeOpusError | None) -> None:
        super().__init__()
        self.granted = granted
        self.asked: list[tuple[bytes, str, float]] = []

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        self.asked.append((key_hash, completion.model, ttl))
        if isinstance(self.granted, ClaudeOpusError):
            raise self.granted
        if self.granted is None:
            return None
        return dataclasses.replace(self.granted, lease_id=f"00000000-0000-4000-8000-{len(self.asked):012d}")


async def settled(book: LeaseBook, control: LeasingControl, asked: int = 1) -> None:
    """Wait until the book asked control ``asked`` times and took the answer in."""
    for _ in range(200):
        if len(control.asked) >= asked:
            await asyncio.sleep(0.01)
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the book did not ask for a lease")
