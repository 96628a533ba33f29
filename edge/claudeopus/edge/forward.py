"""Forwarding completions to the upstream: admit, forward, relay, settle.

This is the edge's core collaborator; it knows the upstream client and metering, but no web
framework: it returns :mod:`claudeopus.edge.replies` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson

from claudeopus.edge import errors
from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, CompletionRequest, parse_completion, with_output_cap
from claudeopus.edge.deadline import Deadline
from claudeopus.edge.disconnect import DisconnectWatcher, Receive
from claudeopus.edge.metering.meter import Metering, Ticket
from claudeopus.edge.metering.types import Outcome, UsageSource, UsageStatus
from claudeopus.edge.redaction import Redactor, error_object
from claudeopus.edge.relay import StreamRelay
from claudeopus.edge.replies import BodyReply, Reply, StreamReply
from claudeopus.edge.settings import DEFAULT_MODELS_OWNED_BY
from claudeopus.edge.sse import parse_usage
from claudeopus.edge.upstream import ConnectFailed, Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout

# The pause before another attempt at a connection that failed (refused, unreachable).
CONNECT_RETRY_DELAY_SECONDS = 0.05
_log = logging.getLogger(__name__)
# Upstream statuses that are the client's own business: the error passes, redacted.
CLIENT_ERRORS = frozenset({400, 404, 409, 413, 415, 422})


class Forwarder:
    """Admit the request, call the upstream, hand back a reply, settle afterwards.

    Example::

        forwarder = Forwarder(upstream=upstream, metering=metering, upstream_api_key="")
        hashed = await forwarder.authenticate(secret)  # before the body is read
        reply = await forwarder.chat_completions(hashed, raw_body, receive)
    """

    def __init__(
        self,
        *,
        upstream: Upstream,
        metering: Metering,
        upstream_api_key: str,
        output_cap_field: str = "max_completion_tokens",
        connect_retries: int = 1,
        max_duration: float = 600.0,
        max_choices: int = DEFAULT_MAX_CHOICES,
        models_owned_by: str = DEFAULT_MODELS_OWNED_BY,
    ) -> None:
        self._upstream = upstream
        self._metering = metering
        self._redactor = Redactor(upstream_api_key)
        self._cap_field = output_cap_field
        self._connect_retries = connect_retries
        self._max_duration = max_duration
        self._max_choices = max_choices
        self._owned_by = models_owned_by

    async def authenticate(self, secret: str) -> bytes:
        """The key's hash, or the refusal of a key control does not know, before its request's body
        is read (see key_check.py)."""
        return await self._metering.authenticate(secret)

    async def chat_completions(self, hashed: bytes, raw: bytes, receive: Receive | None) -> Reply:
        """Forward a request whose key :meth:`authenticate` passed (``hashed`` is what it returned)."""
        started = time.perf_counter()
        completion = parse_completion(raw, self._max_choices)
        ticket = await self._metering.admit(hashed, completion, started)
        if ticket.cap and not completion.max_output_tokens:
            completion = with_output_cap(completion, ticket.cap, self._cap_field)
        try:
            return await self._forward(completion, ticket, receive)
        except errors.OpenAIError as error:
            error.headers.append((b"x-request-id", ticket.request_id.encode()))
            raise

    async def _forward(self, completion: CompletionRequest, ticket: Ticket, receive: Receive | None) -> Reply:
        """Everything after the request was admitted; every way out of here settles the ticket exactly once."""
        headers = [(b"x-request-id", ticket.request_id.encode())]
        deadline = time.perf_counter() + self._max_duration
        try:
            response = await self._open(completion, deadline)
        except errors.OpenAIError as error:
            ticket.settle(Outcome.failed(error.status))
            raise
        except BaseException:
            ticket.settle(Outcome.failed(499))
            raise
        if completion.stream and response.status_code == 200 and response.content_type.startswith("text/event-stream"):
            relay = StreamRelay(
                response=response,
                completion=completion,
                ticket=ticket,
                watcher=DisconnectWatcher(receive),
                deadline=deadline,
                redactor=self._redactor,
            )
            return StreamReply(events=relay.events, headers=[*headers, (b"cache-control", b"no-cache")])
        try:
            async with Deadline(deadline):
                body = await response.aread()
        except (UpstreamTimeout, TimeoutError):
            ticket.settle(Outcome.failed(504))
            raise errors.upstream_timeout() from None
        except UpstreamError:
            ticket.settle(Outcome.failed(502))
            raise errors.upstream_broken("cut its answer off") from None
        except BaseException:
            ticket.settle(Outcome.failed(499))
            raise
        finally:
            await response.aclose()
        if response.status_code != 200:
            error_reply = self._upstream_error(response.status_code, body)
            ticket.settle(Outcome.failed(error_reply.status))
            return BodyReply(status=error_reply.status, body=error_reply.body, headers=headers)
        outcome = _body_outcome(body, completion)
        if outcome is None:
            ticket.settle(Outcome.failed(502))
            raise errors.upstream_broken("sent an answer that is not a JSON object")
        ticket.settle(outcome)
        return BodyReply(status=200, body=body, headers=headers)

    async def models(self, secret: str) -> BodyReply:
        info = await self._metering.key_info(secret)
        with _upstream_call():
            response = await self._upstream.send("GET", "models")
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        if response.status_code != 200:
            raise errors.upstream_broken(f"failed to list models (HTTP {response.status_code})")
        try:
            listing = orjson.loads(body)
            models = [m for m in listing["data"] if isinstance(m, dict)]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise errors.upstream_broken("sent a malformed model list") from None
        models = [m for m in models if info.may_use(m.get("id"))]
        listed = [self._model_object(m) for m in models if isinstance(m.get("id"), str)]
        return BodyReply(status=200, body=orjson.dumps({"object": "list", "data": listed}))

    def _model_object(self, upstream: dict[str, Any]) -> dict[str, Any]:
        """A model as the gateway lists it: its id and creation time, owned by the gateway; nothing else
        of the upstream's object (its owner, permissions or fine-tune details name the operator's accounts)."""
        created = upstream.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            created = 0
        return {"id": upstream["id"], "object": "model", "created": created, "owned_by": self._owned_by}

    async def _open(self, completion: CompletionRequest, deadline: float) -> UpstreamResponse:
        """The upstream's response head; a connection that failed before sending anything is tried again."""
        body = completion.upstream_body
        with _upstream_call():
            async with Deadline(deadline):
                for retry in range(1, self._connect_retries + 1):
                    try:
                        return await self._upstream.send("POST", "chat/completions", body)
                    except ConnectFailed:
                        # Only ConnectFailed: no byte of the request left (see upstream.py). After a
                        # timeout, reset or close the upstream may have seen the request: no retry.
                        _log.warning("upstream connection failed; retry %d of %d", retry, self._connect_retries)
                    await asyncio.sleep(CONNECT_RETRY_DELAY_SECONDS)
                return await self._upstream.send("POST", "chat/completions", body)

    def _upstream_error(self, status: int, body: bytes) -> BodyReply:
        """The client's view of an upstream error.

        Only what is the client's own business passes: for 400/404/409/413/415/422
        the upstream's message (with anything key- or account-like redacted), its
        type, param and code. The upstream's credentials, organisation, quota and
        rate limits are the reseller's business and never shown.
        """
        upstream = _error_object(body)
        if status in (401, 403):
            error: errors.OpenAIError = errors.UpstreamFailed(
                "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed"
            )
        elif status == 429 and _out_of_credit(upstream):
            error = errors.ControlUnavailable(
                "The upstream provider account is out of credit; please retry later.", code="upstream_quota_exhausted"
            )
        elif status == 429:
            error = errors.UpstreamRateLimited(
                "The upstream provider is rate limiting requests; please retry later.", code="upstream_rate_limited"
            )
        elif status in CLIENT_ERRORS and upstream is not None:
            body = self._redactor.error_body(upstream, f"The request was refused (HTTP {status}).")
            return BodyReply(status=status, body=body)
        elif status in CLIENT_ERRORS:
            return BodyReply(status=status, body=errors.upstream_broken(f"refused the request (HTTP {status})").json())
        else:
            error = errors.upstream_broken(f"failed (HTTP {status})")
        return BodyReply(status=error.status, body=error.json())


@contextlib.contextmanager
def _upstream_call() -> Iterator[None]:
    """Failures of an upstream call become OpenAI-shaped 502/504 errors."""
    try:
        yield
    except (UpstreamTimeout, TimeoutError):
        raise errors.upstream_timeout() from None
    except ConnectFailed:
        raise errors.upstream_unreachable() from None
    except UpstreamError:
        raise errors.upstream_broken("dropped the connection before answering") from None


def _error_object(body: bytes) -> dict[str, Any] | None:
    """The error object of an OpenAI-style error body, if that is what it is."""
    with contextlib.suppress(orjson.JSONDecodeError):
        return error_object(orjson.loads(body))
    return None


def _out_of_credit(upstream: dict[str, Any] | None) -> bool:
    return upstream is not None and "insufficient_quota" in (upstream.get("code"), upstream.get("type"))


def _body_outcome(body: bytes, completion: CompletionRequest) -> Outcome | None:
    """What a 200 answer used; None when it is no JSON object (nothing the client could read)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    usage = parse_usage(parsed.get("usage"))
    if usage is None:
        return Outcome(
            input_tokens=completion.estimated_input_tokens,
            output_tokens=len(body) // 4,
            status=UsageStatus.SUCCEEDED,
            source=UsageSource.ESTIMATED,
            http_status=200,
        )
    return Outcome(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        status=UsageStatus.SUCCEEDED,
        source=UsageSource.REPORTED,
        http_status=200,
    )
