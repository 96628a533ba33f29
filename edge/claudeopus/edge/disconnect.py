"""Noticing that the HTTP client went away while a stream is being relayed.

Uvicorn silently drops writes to a closed connection, so the relay must watch
the ASGI ``receive`` channel itself: after the request body, the next message
is ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


class DisconnectWatcher:
    """Owns one task that finishes when the client disconnects; :meth:`aclose` stops it.

    Example::

        watcher = DisconnectWatcher(receive)
        watcher.start()
        ...  # race work against watcher.gone
        await watcher.aclose()
    """

    def __init__(self, receive: Receive | None) -> None:
        self._receive = receive
        self._task: asyncio.Future[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch()) if self._receive else loop.create_future()

    @property
    def gone(self) -> asyncio.Future[None]:
        assert self._task is not None, "start() first"
        return self._task

    async def _watch(self) -> None:
        assert self._receive is not None
        while True:
            message = await self._receive()
            if message.get("type") == "http.disconnect":
                return

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
