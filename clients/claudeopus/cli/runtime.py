"""Process plumbing for the server commands: logging, signals, the event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """``level`` applies to ClaudeOpus's own loggers; libraries never log below INFO.

    Library debug output (SQL with bound values, HTTP request lines with query
    strings) could carry account data or URLs, so it stays off at every level.
    """
    wanted = logging.getLevelName(level.upper())
    if not isinstance(wanted, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=max(wanted, logging.INFO), format=LOG_FORMAT)
    logging.getLogger("claudeopus").setLevel(wanted)
    # SQL with bound values (hashes, emails) and request lines: never, whatever the root level.
    quiet = ("uvicorn.access", "httpx", "httpcore", "aiohttp.access", "blacksheep.server", "tortoise", "aiosqlite")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop where available; SIGINT/SIGTERM set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(runner())
    else:
        uvloop.run(runner())
