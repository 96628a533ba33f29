"""Synchronous helpers over the async client, for tests that drive processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from claudeopus.client import ClaudeOpusClient
from claudeopus.control.settings import DEFAULT_BOOTSTRAP_TOKEN_FILE
from claudeopus.v1 import accounts_pb2, usage_pb2

T = TypeVar("T")


def call(target: str, key: str | None, work: Callable[[ClaudeOpusClient], Awaitable[T]]) -> T:
    async def runner() -> T:
        async with ClaudeOpusClient(target, key=key) as client:
            return await work(client)

    return asyncio.run(runner())


def bootstrap_token(control_dir: Path) -> str:
    """The one-time token a ``claudeopus control`` started in ``control_dir`` wrote there (0600)."""
    file = control_dir / DEFAULT_BOOTSTRAP_TOKEN_FILE
    assert file.stat().st_mode & 0o777 == 0o600, oct(file.stat().st_mode)
    return file.read_text().strip()


def bootstrap(
    target: str, control_dir: Path, email: str = "root@example.com", display_name: str = "Root"
) -> accounts_pb2.BootstrapAdminResponse:
    """BootstrapAdmin on a control process started in ``control_dir``, with the token it wrote there."""
    token = bootstrap_token(control_dir)
    return call(target, None, lambda client: client.bootstrap_admin(email, display_name, token=token))


def usage_records(target: str, key: str, *, api_key: str = "") -> list[usage_pb2.UsageRecord]:
    async def collect(client: ClaudeOpusClient) -> list[usage_pb2.UsageRecord]:
        return [r async for r in client.iter_usage_records(api_key=api_key)]

    return call(target, key, collect)


def wait_for_settled(
    target: str, key: str, api_key: str, count: int, timeout: float = 10.0
) -> list[usage_pb2.UsageRecord]:
    """Settles run after the response; poll until ``count`` records of ``api_key`` are settled."""

    deadline = time.monotonic() + timeout
    while True:
        records = usage_records(target, key, api_key=api_key)
        settled = [r for r in records if r.status != usage_pb2.USAGE_STATUS_RESERVED]
        if len(settled) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)
