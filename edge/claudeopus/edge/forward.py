"""Forwarding completions to the upstream: authorize, relay, settle.

This is the edge's core collaborator; it knows httpx and the control client,
but no web framework: it returns :mod:`claudeopus.edge.replies` objects.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson

from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest, parse_completion
from claudeopus.edge.control import ControlClient, Outcome
from claudeopus.edge.disconnect import DisconnectWatcher, Receive
from claudeopus.edge.relay import StreamRelay
from claudeopus.edge.replies import BodyReply, Reply, StreamReply
from claudeopus.edge.settler import Settler
from claudeopus.edge.sse import parse_usage
from claudeopus.v1 import usage_pb2

REDACTED = b"[redacted]"
# Upstream statuses that are the client's business and pass through unchanged.
PASS_THROUGH = frozenset({400, 404, 409, 413, 415, 422, 429})


class Forwarder:
    """Authorize with control, call the upstream, hand back a reply, settle afterwards.

    Example::

        forwarder = Forwarder(http=client, control=control, settler=settler, upstream_api_key="")
        reply = await forwarder.chat_completions(secret, raw_body, receive)
    """

    def __init__(
        self, *, http: httpx.AsyncClient, control: ControlClient, settler: Settler, upstream_api_key: str
    ) -> None:
        self._http = http
        self._control = control
        self._settler = settler
        self._upstream_key = upstream_api_key.encode()

    async def chat_completions(self, secret: str, raw: bytes, receive: Receive | None) -> Reply:
        started = time.perf_counter()
        completion = parse_completion(raw)
        request_id = str(uuid.uuid4())
        await self._control.authorize(request_id, secret, completion)
        headers = [(b"x-request-id", request_id.encode())]
        try:
            response = await self._open(completion)
        except errors.OpenAIError as error:
            self._settle_failure(request_id, started, error.status)
            raise
        except BaseException:
            self._settle_failure(request_id, started, 499)
            raise
        if completion.stream and response.status_code == 200:
            relay = StreamRelay(
                response=response,
                completion=completion,
                request_id=request_id,
                started_at=started,
                settler=self._settler,
                watcher=DisconnectWatcher(receive),
            )
            return StreamReply(events=relay.events, headers=[*headers, (b"cache-control", b"no-cache")])
        try:
            body = await response.aread()
        except httpx.HTTPError:
            self._settle_failure(request_id, started, 502)
            raise errors.upstream_broken("cut its answer off") from None
        finally:
            await response.aclose()
        if response.status_code != 200:
            error_reply = self._upstream_error(response.status_code, body)
            self._settle_failure(request_id, started, error_reply.status)
            return BodyReply(status=error_reply.status, body=error_reply.body, headers=headers)
        self._settler.submit(request_id, _body_outcome(body, completion), started)
        return BodyReply(status=200, body=body, headers=headers)

    async def models(self, secret: str) -> BodyReply:
        info = await self._control.verify(secret)
        with _upstream_call():
            response = await self._http.get("models")
        if response.status_code != 200:
            raise errors.upstream_broken(f"failed to list models (HTTP {response.status_code})")
        try:
            listing = orjson.loads(response.content)
            models = [m for m in listing["data"] if isinstance(m, dict)]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise errors.upstream_broken("sent a malformed model list") from None
        if info.allowed_models:
            models = [m for m in models if m.get("id") in info.allowed_models]
        return BodyReply(status=200, body=orjson.dumps({"object": "list", "data": models}))

    async def _open(self, completion: CompletionRequest) -> httpx.Response:
        request = self._http.build_request(
            "POST",
            "chat/completions",
            content=completion.upstream_body,
            headers={"content-type": "application/json"},
        )
        with _upstream_call():
            return await self._http.send(request, stream=True)

    def _upstream_error(self, status: int, body: bytes) -> BodyReply:
        """The client's view of an upstream error; never the upstream's credentials."""
        if status in PASS_THROUGH and _is_openai_error(body):
            if self._upstream_key:
                body = body.replace(self._upstream_key, REDACTED)
            return BodyReply(status=status, body=body)
        if status in (401, 403):
            error = errors.UpstreamFailed(
                "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed"
            )
        elif status in PASS_THROUGH:
            error = errors.UpstreamFailed(
                f"The upstream provider refused the request (HTTP {status}).", code="upstream_error"
            )
            return BodyReply(status=status, body=error.json())
        else:
            error = errors.upstream_broken(f"failed (HTTP {status})")
        return BodyReply(status=error.status, body=error.json())

    def _settle_failure(self, request_id: str, started: float, http_status: int) -> None:
        outcome = Outcome(
            input_tokens=0,
            output_tokens=0,
            status=usage_pb2.USAGE_STATUS_UPSTREAM_ERROR,
            source=usage_pb2.USAGE_SOURCE_ESTIMATED,
            http_status=http_status,
        )
        self._settler.submit(request_id, outcome, started)


@contextlib.contextmanager
def _upstream_call() -> Iterator[None]:
    """httpx failures of an upstream call become OpenAI-shaped 502/504 errors."""
    try:
        yield
    except httpx.TimeoutException:
        raise errors.upstream_timeout() from None
    except httpx.HTTPError:
        raise errors.upstream_unreachable() from None


def _is_openai_error(body: bytes) -> bool:
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
    return False


def _body_outcome(body: bytes, completion: CompletionRequest) -> Outcome:
    usage = None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        usage = parse_usage(parsed.get("usage")) if isinstance(parsed, dict) else None
    if usage is None:
        return Outcome(
            input_tokens=completion.estimated_input_tokens,
            output_tokens=len(body) // 4,
            status=usage_pb2.USAGE_STATUS_SUCCEEDED,
            source=usage_pb2.USAGE_SOURCE_ESTIMATED,
            http_status=200,
        )
    return Outcome(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        status=usage_pb2.USAGE_STATUS_SUCCEEDED,
        source=usage_pb2.USAGE_SOURCE_REPORTED,
        http_status=200,
    )
