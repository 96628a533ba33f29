"""The access log: one line per HTTP request, and nothing from inside the request.

A line has exactly six space-separated fields::

    127.0.0.1 2025-01-02T03:04:05.123Z 200 /v1/chat/completions 12.345 6f1c2d3e-...-9a8b

client IP, the time the request arrived (UTC, ISO-8601, milliseconds), the status sent (``-`` if
none was: the client left first; ``500`` if the app failed before answering), the route the
request matched (one of the edge's own route templates, or ``(unmatched)``: nothing a client
writes in a URL is ever kept), the latency in milliseconds until the last byte of the response
(streams included), and the ``x-request-id`` the edge answered with (``-`` when the request was
refused before authorize). No path, query string, header, body, key or model name is ever written.

Lines go to a file rotated on a short window by the standard library's
:class:`~logging.handlers.TimedRotatingFileHandler` (UTC, boundaries aligned to the window, the
newest ``keep`` rotated files kept besides the current one) and/or to stdout, never through a logger,
flushed once per event-loop turn. A file that reaches ``max_bytes`` is rotated out early, under its
window's name (numbered ``.000001``, ... after the first part of a window), so no file grows past
the cap and the oldest go first. Files are created 0600 in directories created 0700.

Example::

    access_log = AccessLog("logs/access.log", rotate_seconds=3600, keep=24, max_bytes=64 * 1024 * 1024)
    app = AccessLogMiddleware(asgi_app, access_log, routes=("/v1/models",))
    with access_log.opened():  # in the app's lifespan
        ...  # serve
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from claudeopus.edge.settings import DEFAULT_ACCESS_LOG_MAX_BYTES as DEFAULT_MAX_BYTES
from claudeopus.edge.settings import EdgeSettings
from claudeopus.private_files import open_private, private_directory

__all__ = ["UNMATCHED", "AccessLog", "AccessLogMiddleware", "AccessLogSink", "access_line"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Clock = Callable[[], float]

_log = logging.getLogger(__name__)
# What a request that matched none of the edge's routes is logged as.
UNMATCHED = "(unmatched)"
_PRINTABLE = re.compile(rb"[\x21-\x7e]*")
_REQUEST_ID = re.compile(r"[0-9A-Za-z._:-]{1,128}")


class AccessLogSink(Protocol):
    """Anything that takes finished access lines (:class:`AccessLog`, or a list in tests)."""

    def write(self, line: str) -> None: ...


def access_line(
    *, client: str | None, started_at: float, status: int | None, route: str, latency: float, request_id: str | None
) -> str:
    """One access line; ``route`` a route template (or UNMATCHED), ``started_at`` a POSIX time, ``latency`` seconds."""
    millis = round(started_at * 1000)
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"
    return " ".join(
        (
            _token(client),
            moment,
            "-" if status is None else str(status),
            _printable(route.encode("utf-8", "replace")) or UNMATCHED,
            f"{max(latency, 0.0) * 1000:.3f}",
            request_id if request_id and _REQUEST_ID.fullmatch(request_id) else "-",
        )
    )


def _printable(raw: bytes) -> str:
    """One token on one line: bytes outside printable ASCII percent-encoded."""
    if _PRINTABLE.fullmatch(raw):
        return raw.decode("ascii")
    return "".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02X}" for b in raw)


def _token(value: str | None) -> str:
    return _printable(value.encode("utf-8", "replace")[:64]) if value else "-"


def _route(scope: Scope, routes: Collection[str]) -> str:
    """The route template the request's path matched (a trailing slash aside), else UNMATCHED."""
    path = scope.get("path")
    if not isinstance(path, str):
        return UNMATCHED
    if path in routes:
        return path
    trimmed = path.rstrip("/")
    return trimmed if trimmed in routes else UNMATCHED


class _Exchange:
    """What the middleware saw of one response."""

    __slots__ = ("finished", "request_id", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.request_id: str | None = None
        self.finished: float | None = None


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    return None


class AccessLogMiddleware:
    """ASGI middleware: one line to ``sink`` per HTTP request, once its response is complete.

    ``routes`` are the app's route templates: a request's path is logged only as the one it
    matched. Other scopes (lifespan, websocket) pass through untouched. Logging never breaks a
    request: any error while building or writing the line is swallowed.

    Example::

        app = AccessLogMiddleware(app, AccessLog(None, stdout=True), routes=("/v1/models",))
    """

    def __init__(
        self,
        app: ASGIApp,
        sink: AccessLogSink,
        *,
        routes: Collection[str],
        wall: Clock = time.time,
        monotonic: Clock = time.perf_counter,
    ) -> None:
        self._app = app
        self._sink = sink
        self._routes = frozenset(routes)
        self._wall = wall
        self._monotonic = monotonic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started_at, started = self._wall(), self._monotonic()
        seen = _Exchange()

        async def noting_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                try:
                    seen.status = int(message["status"])
                    seen.request_id = _request_id(message.get("headers", ()))
                except Exception:  # noqa: S110 - an odd message is the server's to refuse, not the log's
                    pass
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False) and seen.finished is None:
                seen.finished = self._monotonic()

        failed = False
        try:
            await self._app(scope, receive, noting_send)
        except Exception:
            failed = True  # the server answers 500 if nothing was sent yet
            raise
        finally:
            try:
                finished = seen.finished if seen.finished is not None else self._monotonic()
                status = seen.status if seen.status is not None else (500 if failed else None)
                client = scope.get("client")
                self._sink.write(
                    access_line(
                        client=str(client[0]) if client else None,
                        started_at=started_at,
                        status=status,
                        route=_route(scope, self._routes),
                        latency=finished - started,
                        request_id=seen.request_id,
                    )
                )
            except Exception:  # noqa: S110 - logging never breaks a request
                pass


class _UtcWindowHandler(logging.handlers.TimedRotatingFileHandler):
    """The stdlib's timed rotation, on an injectable clock, at UTC boundaries aligned to the window.

    Aligned windows (every hour on the hour, every 10 minutes at :00, :10, ...) make each rotated
    file's suffix name exactly the window it covers. A file left by an earlier run is rotated
    under its own window's name on the first line after a restart. A file that would pass
    ``max_bytes`` is rotated at once, under its window's name; the later parts of one window are
    numbered, so names sort oldest first and the oldest are the ones deleted. Only the rotation comes
    from the stdlib: :meth:`write_line` makes no log record and formats nothing.
    """

    def __init__(self, path: Path, *, seconds: int, keep: int, clock: Clock, max_bytes: int) -> None:
        when, count = _unit(seconds)
        self._max_bytes = max_bytes
        super().__init__(path, when=when, interval=count, backupCount=keep, encoding="utf-8", utc=True)
        self._clock = clock
        stat = os.stat(self.baseFilename)
        # /dev/stdout and friends: written to, never renamed.
        self._rotates = stat.st_mode & 0o170000 == 0o100000  # a regular file
        start = stat.st_mtime if stat.st_size else clock()
        self.rolloverAt = self.computeRollover(int(start))
        self._size = stat.st_size
        self._sized: object = self.stream  # the stream self._size counts the bytes of

    def computeRollover(self, currentTime: int) -> int:
        return (currentTime // self.interval + 1) * self.interval

    def _open(self) -> io.TextIOWrapper:
        fd = open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND)
        return open(fd, "a", encoding="utf-8")

    def write_line(self, line: str) -> None:
        """``line`` and a newline, rotating first when its window has passed or it would pass the cap."""
        data = line + "\n"
        size = len(data.encode("utf-8"))
        if self._due(size):
            self.doRollover()
        if self.stream is None:
            self.stream = self._open()
        if self._sized is not self.stream:  # opened anew (a rotation): count from its end
            self._sized, self._size = self.stream, self.stream.tell()
        self.stream.write(data)  # flushed by AccessLog, once per event-loop turn
        self._size += size

    def _due(self, size: int) -> bool:
        if not self._rotates:
            self.rolloverAt = self.computeRollover(int(self._clock()))
            return False
        if int(self._clock()) >= self.rolloverAt:
            return True
        if self.stream is None or self._sized is not self.stream:
            return False
        return self._size > 0 and self._size + size > self._max_bytes

    def rotation_filename(self, default_name: str) -> str:
        """The window's own name for its first part; ``.000001``, ``.000002``... for the later ones."""
        if not os.path.exists(default_name):
            return default_name
        number = 1
        while os.path.exists(f"{default_name}.{number:06d}"):
            number += 1
        return f"{default_name}.{number:06d}"

    def doRollover(self) -> None:
        super().doRollover()
        self.rolloverAt = self.computeRollover(int(self._clock()))


class _StreamWriter:
    """Lines to a text stream (stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write_line(self, line: str) -> None:
        self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def _unit(seconds: int) -> tuple[str, int]:
    """The stdlib's ``when`` and ``interval`` for a window: the largest unit that divides it."""
    for when, size in (("D", 86400), ("H", 3600), ("M", 60)):
        if seconds % size == 0:
            return when, seconds // size
    return "S", seconds


class AccessLog:
    """Where access lines go: a rotating file, stdout, both, or nowhere.

    Holds no handler until :meth:`opened` (the app's lifespan) and none after it; lines written
    outside it are dropped. ``clock`` decides rotation (tests inject one).

    Example::

        access_log = AccessLog("logs/access.log", rotate_seconds=600, keep=6, stdout=True)
        with access_log.opened():
            access_log.write("127.0.0.1 2025-01-02T03:04:05.123Z 200 /v1/models 1.250 -")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        rotate_seconds: int = 3600,
        keep: int = 24,
        max_bytes: int = DEFAULT_MAX_BYTES,
        stdout: bool = False,
        clock: Clock = time.time,
        stream: TextIO | None = None,
    ) -> None:
        self._path = None if path is None else Path(path)
        self._rotate_seconds = rotate_seconds
        self._keep = keep
        self._max_bytes = max_bytes
        self._stdout = stdout
        self._clock = clock
        self._stream = stream
        self._writers: tuple[_UtcWindowHandler | _StreamWriter, ...] = ()
        self._flush_pending = False

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> AccessLog:
        return cls(
            settings.access_log_path,
            rotate_seconds=settings.access_log_rotate_seconds,
            keep=settings.access_log_keep,
            max_bytes=settings.access_log_max_bytes,
            stdout=settings.access_log_stdout,
        )

    @property
    def enabled(self) -> bool:
        return self._path is not None or self._stdout

    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """For ``Application.lifespan``: the handlers exist while the app serves."""
        with self.opened():
            yield

    @contextlib.contextmanager
    def opened(self) -> Iterator[AccessLog]:
        """Create the writers (and the file's directory); close them on the way out.

        The writers are this object's own: lines reach no logger, and no two apps in one
        process share a file handle.
        """
        writers: list[_UtcWindowHandler | _StreamWriter] = []
        try:
            if self._path is not None:
                private_directory(self._path.parent)
                rotating = _UtcWindowHandler(
                    self._path,
                    seconds=self._rotate_seconds,
                    keep=self._keep,
                    clock=self._clock,
                    max_bytes=self._max_bytes,
                )
                writers.append(rotating)
                _log.info(
                    "access log: %s, rotated every %ss (UTC) or at %s bytes, %s rotated files kept",
                    rotating.baseFilename,
                    self._rotate_seconds,
                    self._max_bytes,
                    self._keep,
                )
            if self._stdout:
                writers.append(_StreamWriter(self._stream or sys.stdout))
            self._writers = tuple(writers)
            yield self
        finally:
            self._writers = ()
            for writer in writers:
                writer.close()

    def write(self, line: str) -> None:
        """``line`` reaches the file at the end of this event-loop turn (at once outside a loop): the
        lines of requests that end together cost one system write."""
        for writer in self._writers:
            writer.write_line(line)
        if self._flush_pending or not self._writers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        for writer in self._writers:
            try:
                writer.flush()
            except (OSError, ValueError) as error:  # a full disk: the lines are lost, never the request
                _log.warning("access log: writing failed (%s)", type(error).__name__)
