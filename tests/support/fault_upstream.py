"""A raw-socket upstream that misbehaves on purpose, for the fault tests.

Each request's ``model`` picks the fault (every answer says ``Connection: close``):

    fault-ok          a proper answer (JSON, or SSE with usage and [DONE])
    fault-hang        reads the request and never answers (until the peer closes)
    fault-reset       reads the request, then resets the connection (RST) before any header
    fault-close       reads the request, then closes (FIN) before any header
    fault-stall       headers and a first part (2 SSE chunks, or half a JSON body), then silence
    fault-reset-mid   headers and a first part, then RST
    fault-truncated   Content-Length promises more than is sent, then FIN
    fault-early       a stream of 2 chunks that ends properly, but without usage or [DONE]
    fault-endless     headers, then an SSE chunk (or body bytes) every 50 ms, forever
    fault-slow        a stream of 100 chunks, one every 20 ms (for client disconnects)
    fault-status-NNN  HTTP NNN with an OpenAI error body
    fault-malformed   200 with a body (or an event) that is not JSON

:meth:`refusing` closes the listening socket for a while (connections are refused), and
``requests`` lists the model of every request read, so tests can count attempts.

Example::

    with FaultUpstream() as upstream:
        upstream.url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import orjson

CHUNK_PAUSE = 0.05
SLOW_PAUSE = 0.02
SLOW_CHUNKS = 100
FIRST_PART_CHUNKS = 2
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def _chunk(model: str, content: str) -> bytes:
    delta = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    event = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1, "model": model}
    return b"data: " + orjson.dumps({**event, "choices": [delta]}) + b"\n\n"


def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (streams use chunked transfer encoding, as real providers do)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: int, content_type: bytes, length: int | None = None) -> bytes:
    framing = b"content-length: %d" % length if length is not None else b"transfer-encoding: chunked"
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\n%s\r\nconnection: close\r\n\r\n" % (status, content_type, framing)


class FaultUpstream:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.open_connections = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fault upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """No listening socket inside the block: every connection attempt is refused."""
        self._call(self._close_listener())
        try:
            yield
        finally:
            self._call(self._listen())

    def _call(self, work: object) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(work, self._loop).result(10)  # type: ignore[arg-type]

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._listen()
        self._ready.set()
        await self._stop.wait()
        await self._close_listener()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the edge went away first: that is what some tests do
        finally:
            self.open_connections -= 1
            if not writer.transport.is_closing():
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        body = orjson.loads(await reader.readexactly(length))
        model, stream = str(body["model"]), bool(body.get("stream"))
        self.requests.append(model)
        fault = model.removeprefix("fault-")
        if fault == "hang":
            await reader.read()  # until the edge gives up and closes
        elif fault in ("reset", "close"):
            self._drop(writer, reset=fault == "reset")
        elif fault.startswith("status-"):
            error = orjson.dumps({"error": {"message": "upstream says no", "type": "x", "param": None, "code": "y"}})
            writer.write(_head(int(fault.removeprefix("status-")), b"application/json", len(error)) + error)
        elif fault == "malformed":
            bad = b"{not json"
            if stream:
                writer.write(_head(200, b"text/event-stream") + _framed(b"data: " + bad + b"\n\n") + b"0\r\n\r\n")
            else:
                writer.write(_head(200, b"application/json", len(bad)) + bad)
        elif stream:
            await self._stream(fault, model, reader, writer)
        else:
            await self._body(fault, model, reader, writer)
        await writer.drain()

    async def _stream(self, fault: str, model: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if fault == "truncated":
            writer.write(_head(200, b"text/event-stream", 10_000) + _chunk(model, "cut "))
            await writer.drain()
            self._drop(writer, reset=False)
            return
        writer.write(_head(200, b"text/event-stream"))
        count = SLOW_CHUNKS if fault == "slow" else FIRST_PART_CHUNKS
        for index in range(count):
            writer.write(_framed(_chunk(model, f"w{index} ")))
            await writer.drain()
            if fault == "slow":
                await asyncio.sleep(SLOW_PAUSE)
        if fault == "stall":
            await reader.read()
        elif fault == "early":
            writer.write(b"0\r\n\r\n")
        elif fault == "reset-mid":
            await asyncio.sleep(0.1)  # let the edge relay what came first
            self._drop(writer, reset=True)
        elif fault == "endless":
            while True:
                await asyncio.sleep(CHUNK_PAUSE)
                writer.write(_framed(_chunk(model, "more ")))
                await writer.drain()
        else:
            usage = b'data: {"id":"u","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":'
            writer.write(_framed(usage + orjson.dumps(USAGE) + b"}\n\n") + _framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def _body(self, fault: str, model: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        message = {"role": "assistant", "content": "fine"}
        answer = orjson.dumps(
            {
                "id": "chatcmpl-fault",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": USAGE,
            }
        )
        if fault == "ok":
            writer.write(_head(200, b"application/json", len(answer)) + answer)
            return
        if fault == "endless":
            writer.write(_head(200, b"application/json"))
            while True:
                writer.write(_framed(b" "))
                await writer.drain()
                await asyncio.sleep(CHUNK_PAUSE)
        writer.write(_head(200, b"application/json", len(answer)) + answer[: len(answer) // 2])
        await writer.drain()
        if fault == "stall":
            await reader.read()
        elif fault == "reset-mid":
            await asyncio.sleep(0.1)
            self._drop(writer, reset=True)
        else:  # truncated
            self._drop(writer, reset=False)

    @staticmethod
    def _drop(writer: asyncio.StreamWriter, *, reset: bool) -> None:
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: SYNs are dropped, so connecting times out."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(2):  # a backlog of 0 still queues one connection; the next is dropped
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
