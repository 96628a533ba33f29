"""Edge worker processes for ``claudeopus serve``: the edge beside control, on other cores.

In one process, control (its database work, its gRPC server) and the edge share one event
loop and one core: under load every request waits behind control's batches. With
``CLAUDEOPUS_WORKERS=N`` (N >= 1), ``serve`` runs N edge processes instead, as a split
deployment would, sharing the edge's port (bound once, here, so a busy port is the same clean
error as without workers). Each worker gets its settings (service token included) over a
pipe, never in its environment or command line; with more than one, each has a spool
directory and an access log file of its own (``<spool dir>/worker-<i>``, ``<access log>.<i>``),
since a spool directory belongs to one edge.

Example::

    async with EdgeWorkers(edge_settings, count=2, log_level="info"):
        await stop.wait()   # the workers are stopped (SIGTERM, then SIGKILL) on the way out
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import socket
import time
from multiprocessing.process import BaseProcess
from types import TracebackType

from claudeopus.cli.runtime import configure_logging, run
from claudeopus.edge.app import build_app
from claudeopus.edge.server import HttpServer, bind
from claudeopus.edge.settings import EdgeSettings

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 35.0  # the edge's graceful shutdown takes up to 30 s
_READY = "ready"


def worker_settings(settings: EdgeSettings, index: int, count: int) -> EdgeSettings:
    """Worker ``index``'s settings: with several workers, its own spool directory and access log file."""
    if count == 1:
        return settings
    access_log = f"{settings.access_log_path}.{index}" if settings.access_log_path else settings.access_log_path
    return dataclasses.replace(
        settings, spool_dir=os.path.join(settings.spool_dir, f"worker-{index}"), access_log_path=access_log
    )


class EdgeWorkers:
    """``count`` edge processes serving ``settings.http_address``; started on enter, stopped on exit."""

    def __init__(self, settings: EdgeSettings, count: int, log_level: str, uvicorn_options: dict[str, object]) -> None:
        self._settings = settings
        self._count = count
        self._log_level = log_level
        self._uvicorn_options = uvicorn_options
        self._processes: list[BaseProcess] = []

    async def __aenter__(self) -> EdgeWorkers:
        sock = bind(self._settings.http_host, self._settings.http_port)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this loop or gRPC
        pipes: list[multiprocessing.connection.Connection] = []
        try:
            for index in range(self._count):
                receiving, sending = context.Pipe(duplex=False)
                settings = worker_settings(self._settings, index, self._count)
                process = context.Process(
                    target=serve_worker,
                    args=(settings, sock, self._log_level, self._uvicorn_options, sending),
                    name=f"claudeopus-edge-{index}",
                )
                process.start()
                sending.close()
                self._processes.append(process)
                pipes.append(receiving)
            await asyncio.to_thread(self._wait_ready, pipes)
        except BaseException:
            await self._stop()
            raise
        finally:
            sock.close()  # the workers hold their own copies
            for pipe in pipes:
                pipe.close()
        return self

    def _wait_ready(self, pipes: list[multiprocessing.connection.Connection]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for process, pipe in zip(self._processes, pipes, strict=True):
            while not pipe.poll(0.05):
                if not process.is_alive():
                    raise OSError(f"edge worker {process.name} exited during start-up (status {process.exitcode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"edge worker {process.name} did not start in time")
            if pipe.recv() != _READY:
                raise OSError(f"edge worker {process.name} failed to start")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the edge stops gracefully
        await asyncio.to_thread(self._join)
        self._processes.clear()

    def _join(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def serve_worker(
    settings: EdgeSettings,
    sock: socket.socket,
    log_level: str,
    uvicorn_options: dict[str, object],
    ready: multiprocessing.connection.Connection,
) -> None:
    """A worker process's body: the edge on ``sock`` until SIGTERM/SIGINT; says ``ready`` once it serves."""
    configure_logging(log_level)

    async def serve(stop: asyncio.Event) -> None:
        server = HttpServer(build_app(settings), settings.http_host, settings.http_port, sock=sock, **uvicorn_options)
        try:
            async with server:
                ready.send(_READY)
                ready.close()
                await stop.wait()
        finally:
            if not ready.closed:
                ready.close()

    run(serve)
