"""Serving an ASGI app with uvicorn inside an already-running event loop.

Signals belong to the caller (the CLI), not to uvicorn, so several servers
(edge, demo upstream) can share one process and stop in order.

Example::

    async with HttpServer(app, "127.0.0.1", 0) as server:
        print("listening on", server.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Any

import uvicorn

STARTUP_TIMEOUT_SECONDS = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``: bound here, so a busy port is a clear OSError instead of uvicorn
    exiting the process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """``app`` served on ``host:port``, or on ``sock`` when given (a socket already bound there, e.g. by a
    parent process that shares it among edge workers)."""

    def __init__(
        self, app: Any, host: str, port: int, *, sock: socket.socket | None = None, **uvicorn_options: Any
    ) -> None:
        options: dict[str, Any] = {
            "lifespan": "on",
            "access_log": False,
            "log_config": None,
            "http": "httptools",
            "loop": "none",
            "timeout_graceful_shutdown": 30,
        }
        options.update(uvicorn_options)
        self._server = _Server(uvicorn.Config(app, host=host, port=port, **options))
        self._task: asyncio.Task[None] | None = None
        self._sock = sock
        self.port = port

    def _bind(self) -> socket.socket:
        return bind(self._server.config.host, self._server.config.port)

    async def __aenter__(self) -> HttpServer:
        sock = self._sock if self._sock is not None else self._bind()
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._serve(sock))
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped the start-up
                raise OSError("the HTTP server stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the HTTP server did not start in time")
            await asyncio.sleep(0.01)
        return self

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as stop:  # uvicorn exits the process when start-up fails
            raise RuntimeError(f"the HTTP server failed to start (exit status {stop.code})") from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
