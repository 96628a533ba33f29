"""Time to first byte of streamed completions, which wrk cannot see.

Each of ``connections`` closed-loop workers keeps one keep-alive connection (aiohttp),
sends a streaming request, notes when the first body bytes (the first SSE event)
arrive, reads the rest, and goes again until time is up. The same client measures
nginx directly and the edges, so its own overhead cancels out of the differences.

Example::

    result = asyncio.run(measure_ttfb(["http://127.0.0.1:8081/v1/chat/completions"], request, 16, 10.0))
    print(result.percentile_ms(50))
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench.wrk import Request

REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class TtfbResult:
    """First-byte and whole-stream times of the successful requests, in seconds; failures counted."""

    first_byte: list[float]
    whole: list[float]
    errors: int

    def percentile_ms(self, percent: float, *, whole: bool = False) -> float:
        samples = sorted(self.whole if whole else self.first_byte)
        if not samples:
            return math.nan
        index = max(0, math.ceil(len(samples) * percent / 100.0) - 1)
        return samples[index] * 1000.0

    def summary(self) -> dict[str, object]:
        return {
            "requests": len(self.first_byte),
            "ttfb_p50_ms": round(self.percentile_ms(50), 3),
            "ttfb_p90_ms": round(self.percentile_ms(90), 3),
            "ttfb_p99_ms": round(self.percentile_ms(99), 3),
            "stream_p50_ms": round(self.percentile_ms(50, whole=True), 3),
            "stream_p99_ms": round(self.percentile_ms(99, whole=True), 3),
            "errors": self.errors,
        }


async def measure_ttfb(urls: Sequence[str], request: Request, connections: int, seconds: float) -> TtfbResult:
    """``connections`` workers, spread round-robin over ``urls``, for ``seconds``."""
    headers = {"content-type": "application/json"}
    if request.api_key:
        headers["authorization"] = f"Bearer {request.api_key}"
    first_byte: list[float] = []
    whole: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)

    async def worker(url: str, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while loop.time() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(url, data=request.body, headers=headers) as response:
                    first = await response.content.readany()
                    arrived = time.perf_counter()
                    await response.read()
                    finished = time.perf_counter()
                    ok = response.status == 200 and first.startswith(b"data:")
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                first_byte.append(arrived - started)
                whole.append(finished - started)
            else:
                errors += 1

    # One session (and connection pool) per worker: exactly one keep-alive connection each.
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) for _ in range(connections)
    ]
    try:
        await asyncio.gather(*(worker(urls[i % len(urls)], s) for i, s in enumerate(sessions)))
    finally:
        for session in sessions:
            await session.close()
    return TtfbResult(first_byte=first_byte, whole=whole, errors=errors)


def run_ttfb(urls: Sequence[str], request: Request, connections: int, seconds: float) -> TtfbResult:
    """:func:`measure_ttfb` on a fresh event loop (uvloop where available, like the edge)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(measure_ttfb(urls, request, connections, seconds))
    return uvloop.run(measure_ttfb(urls, request, connections, seconds))
