"""The fake upstream: nginx on loopback answering with canned chat completions.

nginx cannot look into a request body, so the answer is chosen by the base URL the
edge is configured with: ``/json/v1`` answers every chat completion with a JSON body,
``/sse/v1`` with a server-sent event stream (role chunk, content chunks, a finish chunk,
the ``include_usage`` chunk, ``data: [DONE]``). Streaming scenarios therefore use edges
configured with the ``/sse/v1`` base URL, the others edges with ``/json/v1``.

Example::

    with NginxUpstream(tools.nginx, workdir) as upstream:
        print(upstream.json_url, upstream.sse_url)  # http://127.0.0.1:PORT/json/v1, .../sse/v1
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench.procs import Process, free_port

MODEL = "bench-model"
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 9
_CREATED = 1_700_000_000
_WORDS = ["Hello", " from", " the", " benchmark", " upstream", ",", " nothing", " more", "."]
START_TIMEOUT_SECONDS = 10.0


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def completion_body() -> bytes:
    """The canned non-streaming answer, with usage."""
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_WORDS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stream_body() -> bytes:
    """The canned stream: a role chunk, one chunk per word, a finish chunk, the usage chunk, [DONE]."""

    def chunk(choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, object] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": MODEL,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": word}, "finish_reason": None}]) for word in _WORDS]
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    events.append(chunk([], _usage()))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def models_body() -> bytes:
    return json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode()


def _nginx_string(value: bytes) -> str:
    """``value`` as a single-quoted nginx string (nginx understands \\n, \\', \\\\ inside quotes)."""
    text = value.decode("ascii")
    if "$" in text:
        raise ValueError("nginx would expand $ in a return body")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_config(directory: Path, port: int, workers: str = "auto") -> str:
    return f"""
daemon off;
master_process on;
worker_processes {workers};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    client_body_temp_path {directory}/client_body;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 {_nginx_string(completion_body())};
        }}
        location = /sse/v1/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {_nginx_string(stream_body())};
        }}
        location ~ ^/(json|sse)/v1/models$ {{
            default_type application/json;
            return 200 {_nginx_string(models_body())};
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


class NginxUpstream:
    """nginx in the foreground, as our child, with a generated config in ``directory``."""

    def __init__(self, nginx: str, directory: Path) -> None:
        self._nginx = nginx
        self._directory = directory
        self.port = 0
        self._process: Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def json_url(self) -> str:
        return f"{self.base}/json/v1"

    @property
    def sse_url(self) -> str:
        return f"{self.base}/sse/v1"

    def __enter__(self) -> NginxUpstream:
        self._directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self._directory / "nginx.conf"
        config.write_text(nginx_config(self._directory, self.port))
        argv = [self._nginx, "-p", str(self._directory), "-e", str(self._directory / "error.log"), "-c", str(config)]
        self._process = Process("nginx", argv, {}, self._directory)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise self._process.fail("exited during start-up")
            try:
                reply = httpx.post(f"{self.json_url}/chat/completions", content=b"{}", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if reply.status_code == 200 and reply.content == completion_body():
                return
            raise self._process.fail(f"answered HTTP {reply.status_code} with an unexpected body")
        raise self._process.fail("not serving in time")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.stop()


def check_answer(response: httpx.Response, *, stream: bool) -> str | None:
    """Why ``response`` (from nginx or an edge) is not the canned answer, or None when it is."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if not stream:
        try:
            body = response.json()
        except ValueError:
            return "not JSON"
        content = body.get("choices", [{}])[0].get("message", {}).get("content")
        return None if content == "".join(_WORDS) else f"unexpected content {content!r}"
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return f"content-type {response.headers.get('content-type')!r}"
    text = response.text
    if not text.rstrip().endswith("data: [DONE]"):
        return "stream does not end with data: [DONE]"
    words = "".join(_WORDS)
    relayed = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    return None if relayed == words else f"relayed text {relayed!r}"
