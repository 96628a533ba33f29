"""A small, honest fake upstream on loopback for the end-to-end tests.

It speaks OpenAI's chat-completion API, honours ``max_tokens``, echoes the last
user message (so privacy checks can look for it downstream), reports usage it
counted itself, and records what it received so tests can check headers.
The model ``fake-slow`` streams one chunk every 50 ms (for disconnect tests);
``fake-status-NNN`` answers HTTP NNN with an error that quotes the credential
it was sent, as some providers do (for redaction tests).
``fake-greedy`` ignores max_tokens and always writes ``GREEDY_WORDS`` words
(for budget overrun tests). ``fake-pause-first``, ``fake-pause-usage`` and
``fake-pause-done`` stream, but wait ``PAUSE_SECONDS`` before the first chunk,
before the final usage chunk, or between the usage chunk and ``[DONE]``.
``fake-hold`` waits until the test sets ``FakeUpstream.release``: a stream after its first chunk,
an answer before it is sent (to keep requests in flight while a test stops control).
Any of these models with the suffix ``-echo-all`` (``fake-1-echo-all``, ``fake-slow-echo-all``,
``fake-status-400-echo-all``, ...) behaves the same but echoes the WHOLE request body instead of the
last message alone (system messages, tools, tool calls and their arguments, attachments): in the
text, in a tool call's arguments, in an ``x-upstream-echo`` response header, and in error bodies
(for privacy canary tests). ``fake-malformed`` answers 200 with a body that is not JSON (or, streaming,
an event that is not JSON and a stream that ends without ``[DONE]``), the text echoed inside it.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson

from claudeopus.edge.server import HttpServer

SLOW_CHUNK_SECONDS = 0.05
GREEDY_WORDS = 12
PAUSE_SECONDS = 3.0
ECHO_ALL = "-echo-all"
# Listed and answered like fake-1, but priced by no test world (tests/support/prices.py): not served.
UNPRICED_MODEL = "fake-unpriced"
ECHO_HEADER_CHARS = 4096


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    # The body exactly as sent (``body`` is it parsed, where a repeated key keeps only its last value).
    raw: bytes = b""


@dataclass
class Reported:
    """One completion the fake answered: the request body and the usage it counted for it."""

    body: dict[str, Any]
    usage: dict[str, int]


@dataclass
class FakeUpstream:
    """An ASGI app; ``received`` lists every request; ``usage_log`` every usage it reported.

    ``reported`` pairs each of those usages with the request body it answered.
    """

    received: list[Received] = field(default_factory=list)
    usage_log: list[dict[str, int]] = field(default_factory=list)
    reported: list[Reported] = field(default_factory=list)
    # What ``fake-hold`` requests wait for.
    release: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = orjson.loads(raw) if raw else None
        self.received.append(Received(scope["path"], headers, body, raw))
        if scope["path"] == "/v1/models":
            # What a real provider lists: its own organisation as owner, fine-tune details naming it.
            listed = []
            for name in ("fake-1", UNPRICED_MODEL):
                model = {"id": name, "object": "model", "created": 1700000000, "owned_by": "org-operator-secret"}
                model["permission"] = [{"organization": "org-operator-secret", "allow_fine_tuning": True}]
                listed.append(model)
            await _json(send, 200, {"object": "list", "data": listed})
        elif scope["path"] == "/v1/chat/completions" and isinstance(body, dict):
            model = str(body.get("model", ""))
            echo_all = model.endswith(ECHO_ALL)
            model = model.removesuffix(ECHO_ALL)
            if model.startswith("fake-status-"):
                credential = headers.get("authorization", "")
                prompt = _echo_text(raw) if echo_all else body["messages"][-1].get("content")
                message = (
                    f"upstream refused; credential {credential}; masked sk-ups****Z123 in org-SeCrEtOrG123; "
                    f"prompt {prompt}"
                )
                code = "insufficient_quota" if model.endswith("-quota") else "upstream_code"
                status = int(model.removeprefix("fake-status-").removesuffix("-quota"))
                error = {"message": message, "type": "upstream_type", "param": "messages", "code": code, "extra": 1}
                if echo_all:
                    error["echo"] = body
                await _json(send, status, {"error": error}, _echo_headers(raw) if echo_all else ())
            else:
                await self._complete(body, send, raw if echo_all else None)
        else:
            await _json(send, 404, {"error": {"message": "no such route", "type": "invalid_request_error"}})

    async def _complete(self, body: dict[str, Any], send: Any, echo_all: bytes | None = None) -> None:
        """``echo_all``: the raw request body, to echo whole (for a ``-echo-all`` model)."""
        last = _echo_text(echo_all) if echo_all is not None else str(body["messages"][-1].get("content", ""))
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 8
        model = str(body["model"]).removesuffix(ECHO_ALL) if echo_all is not None else body["model"]
        if model == "fake-greedy":
            limit = GREEDY_WORDS
        words = [f"echo:{last}"] + [f"w{i}" for i in range(limit - 1)]
        words = words[:limit]
        usage = {"prompt_tokens": 7 + len(body["messages"]), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if model == "fake-malformed":
            await self._malformed(bool(body.get("stream")), last, send)
            return
        self.usage_log.append(usage)
        self.reported.append(Reported(body, usage))
        base = {"id": "chatcmpl-fake", "created": 1, "model": body["model"]}
        hold = model == "fake-hold"
        echo_headers = _echo_headers(echo_all) if echo_all is not None else ()
        tool_call = {"id": "call_echo", "type": "function", "function": {"name": "echo", "arguments": ""}}
        if echo_all is not None:
            tool_call["function"]["arguments"] = orjson.dumps({"echo": last}).decode()
        if not body.get("stream"):
            if hold:
                await self._held()
            message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
            if echo_all is not None:
                message["tool_calls"] = [tool_call]
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            await _json(send, 200, reply, echo_headers)
            return
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        start_headers = [(b"content-type", b"text/event-stream"), *echo_headers]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        chunk = {**base, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include else {}
        delay = SLOW_CHUNK_SECONDS if model == "fake-slow" else 0.0
        pause = str(model).removeprefix("fake-pause-") if model.startswith("fake-pause-") else ""
        if pause == "first":
            await asyncio.sleep(PAUSE_SECONDS)
        for index, word in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            if hold and index == 1:
                await self._held()
            choices = [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]
            await _event(send, {**chunk, "choices": choices, **extra})
        if echo_all is not None:
            delta = {"tool_calls": [{"index": 0, **tool_call}]}
            await _event(send, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra})
        await _event(send, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
        if pause == "usage":
            await asyncio.sleep(PAUSE_SECONDS)
        if include:
            await _event(send, {**chunk, "choices": [], "usage": usage})
        if pause == "done":
            await asyncio.sleep(PAUSE_SECONDS)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _malformed(self, stream: bool, text: str, send: Any) -> None:
        content_type = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        if not stream:
            await send({"type": "http.response.body", "body": b"{not json: " + text.encode()})
            return
        await send(
            {"type": "http.response.body", "body": b"data: {broken " + text.encode() + b"\n\n", "more_body": True}
        )
        await send({"type": "http.response.body", "body": b"data: [DON"})

    async def _held(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)


async def _json(send: Any, status: int, payload: object, headers: Any = ()) -> None:
    start_headers = [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


def _echo_text(raw: bytes) -> str:
    """The whole request body as text: what a ``-echo-all`` model echoes."""
    return raw.decode("utf-8", "replace")


def _echo_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The request body (URL-encoded, cut to a header's size) in a response header."""
    return [(b"x-upstream-echo", urllib.parse.quote(_echo_text(raw))[:ECHO_HEADER_CHARS].encode("ascii"))]


async def _event(send: Any, payload: object) -> None:
    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(payload) + b"\n\n", "more_body": True})


class ThreadedServer:
    """Serve an ASGI app on a loopback port from a background thread (for sync tests)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.port = 0

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with HttpServer(self._app, "127.0.0.1", 0) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
