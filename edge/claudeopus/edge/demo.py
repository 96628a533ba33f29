"""A built-in demo upstream: a tiny OpenAI-compatible responder for trying ClaudeOpus.

It answers every chat completion with the same deterministic text, honours
``max_tokens`` / ``max_completion_tokens``, streams one word per chunk, and
reports real-looking ``usage`` (words counted as tokens). It keeps nothing.

Example::

    async with HttpServer(DemoUpstream(), "127.0.0.1", 0) as server:
        url = f"http://127.0.0.1:{server.port}/v1"
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

REPLY_TEXT = (
    "Hello from the ClaudeOpus demo upstream. This deterministic reply proves the path "
    "client, edge, control, upstream and usage record works end to end. Configure "
    "CLAUDEOPUS_UPSTREAM_URL to reach a real model provider."
)
REPLY = tuple(REPLY_TEXT.split())
DEFAULT_TOKENS = len(REPLY)
MODELS = ("demo-small", "demo-large")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def reply_words(limit: int) -> list[str]:
    """The fixed reply, cut at ``limit`` words (never longer: a huge max_tokens costs nothing)."""
    return list(REPLY[:limit])


def prompt_tokens(messages: object) -> int:
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += 4 + (len(str(content).split()) if content is not None else 0)
    return total


class DemoUpstream:
    """An ASGI app speaking the two OpenAI routes the edge needs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = await _read(receive)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            listing = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "demo"} for m in MODELS]}
            await _json(send, 200, listing)
        elif method == "POST" and path == "/v1/chat/completions":
            await self._complete(body, send)
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    async def _complete(self, body: bytes, send: Send) -> None:
        try:
            request = orjson.loads(body)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await _json(send, 400, {"error": {"message": "invalid request", "type": "invalid_request_error"}})
            return
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_TOKENS
        words = reply_words(max(1, int(limit)))
        usage = {
            "prompt_tokens": prompt_tokens(request.get("messages")),
            "completion_tokens": len(words),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        finish = "length" if len(words) < DEFAULT_TOKENS else "stop"
        if not request.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            await _json(
                send,
                200,
                {
                    "id": "chatcmpl-demo",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        base = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": created, "model": model}
        for index, word in enumerate(words):
            delta: dict[str, str] = {"content": (" " if index else "") + word}
            if index == 0:
                delta["role"] = "assistant"
            await _event(send, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        await _event(send, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if include_usage:
            await _event(send, {**base, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(send: Send, status: int, payload: object) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _event(send: Send, payload: object) -> None:
    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(payload) + b"\n\n", "more_body": True})
