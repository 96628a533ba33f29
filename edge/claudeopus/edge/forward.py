"""Forwarding completions to the upstream: authorize, relay, settle.

This is the edge's core collaborator; it knows the upstream client and the control client,
but no web framework: it returns :mod:`claudeopus.edge.replies` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from claudeopus.edge import errors
from claudeopus.edge.authorizer import Authorizer
from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, CompletionRequest, parse_completion, with_output_cap
from claudeopus.edge.control import AuthorizeTimedOut, ControlClient
from claudeopus.edge.deadline import Deadline
from claudeopus.edge.disconnect import DisconnectWatcher, Receive
from claudeopus.edge.key_check import KeyCheck
from claudeopus.edge.leases import LeaseBook
from claudeopus.edge.metering.types import LeasedReservation, Outcome, UsageSource, UsageStatus
from claudeopus.edge.redaction import Redactor, error_object
from claudeopus.edge.relay import StreamRelay
from claudeopus.edge.replies import BodyReply, Reply, StreamReply
from claudeopus.edge.settings import DEFAULT_MODELS_OWNED_BY
from claudeopus.edge.settler import Settler
from claudeopus.edge.sse import parse_usage
from claudeopus.edge.upstream import ConnectFailed, Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout

# The settle of a request that was authorized (perhaps) but never forwarded.
NOTHING_USED = Outcome(
    input_tokens=0,
    output_tokens=0,
    status=UsageStatus.UPSTREAM_ERROR,
    source=UsageSource.ESTIMATED,
    http_status=503,
)

# The pause before another attempt at a connection that failed (refused, unreachable).
CONNECT_RETRY_DELAY_SECONDS = 0.05
_log = logging.getLogger(__name__)
# Upstream statuses that are the client's own business: the error passes, redacted.
CLIENT_ERRORS = frozenset({400, 404, 409, 413, 415, 422})


class Forwarder:
    """Authorize with control, call the upstream, hand back a reply, settle afterwards.

    Example::

        forwarder = Forwarder(
            upstream=upstream, control=control, authorizer=authorizer, settler=settler, upstream_api_key=""
        )
        hashed = await forwarder.authenticate(secret)  # before the body is read
        reply = await forwarder.chat_completions(secret, hashed, raw_body, receive)
    """

    def __init__(
        self,
        *,
        upstream: Upstream,
        control: ControlClient,
        authorizer: Authorizer,
        settler: Settler,
        upstream_api_key: str,
        output_cap_field: str = "max_completion_tokens",
        connect_retries: int = 1,
        max_duration: float = 600.0,
        leases: LeaseBook | None = None,
        key_check: KeyCheck | None = None,
        max_choices: int = DEFAULT_MAX_CHOICES,
        models_owned_by: str = DEFAULT_MODELS_OWNED_BY,
    ) -> None:
        self._upstream = upstream
        self._control = control
        self._authorizer = authorizer
        self._settler = settler
        self._redactor = Redactor(upstream_api_key)
        self._cap_field = output_cap_field
        self._connect_retries = connect_retries
        self._max_duration = max_duration
        self._leases = leases
        self._key_check = key_check or KeyCheck(control)
        self._max_choices = max_choices
        self._owned_by = models_owned_by

    async def authenticate(self, secret: str) -> bytes:
        """The key's hash, or the refusal of a key control does not know, before its request's body
        is read (see key_check.py)."""
        return await self._key_check.check(secret)

    async def chat_completions(self, secret: str, hashed: bytes, raw: bytes, receive: Receive | None) -> Reply:
        """Forward a request whose key :meth:`authenticate` passed (``hashed`` is what it returned)."""
        started = time.perf_counter()
        completion = parse_completion(raw, self._max_choices)
        if self._settler.spool_full:
            raise errors.usage_spool_full()  # its usage could not be kept: admit nothing
        request_id = str(uuid.uuid4())
        leased: LeasedReservation | None = None
        admission = self._leases.admit(hashed, completion, request_id) if self._leases is not None else None
        if admission is not None:
            leased, cap = admission.leased, admission.cap
        else:
            try:
                cap = await self._authorizer.authorize(request_id, secret, completion)
            except AuthorizeTimedOut:
                # The answer never came, but the reservation may exist: release it at once (a
                # settle of nothing), instead of leaving it for the sweeper to charge in full.
                self._settler.submit(request_id, NOTHING_USED, started, missing_ok=True)
                raise
            if self._leases is not None:
                self._leases.want(hashed, completion)
        self._key_check.remember(hashed)
        if cap and not completion.max_output_tokens:
            completion = with_output_cap(completion, cap, self._cap_field)
        try:
            return await self._forward(completion, request_id, started, receive, leased)
        except errors.OpenAIError as error:
            error.headers.append((b"x-request-id", request_id.encode()))
            raise

    async def _forward(
        self,
        completion: CompletionRequest,
        request_id: str,
        started: float,
        receive: Receive | None,
        leased: LeasedReservation | None,
    ) -> Reply:
        """Everything after a successful authorize; every way out of here settles exactly once."""
        headers = [(b"x-request-id", request_id.encode())]
        deadline = time.perf_counter() + self._max_duration
        try:
            response = await self._open(completion, deadline)
        except errors.OpenAIError as error:
            self._settle_failure(request_id, leased, started, error.status)
            raise
        except BaseException:
            self._settle_failure(request_id, leased, started, 499)
            raise
        if completion.stream and response.status_code == 200 and response.content_type.startswith("text/event-stream"):
            relay = StreamRelay(
                response=response,
                completion=completion,
                request_id=request_id,
                started_at=started,
                settler=self._settler,
                watcher=DisconnectWatcher(receive),
                deadline=deadline,
                leased=leased,
                redactor=self._redactor,
            )
            return StreamReply(events=relay.events, headers=[*headers, (b"cache-control", b"no-cache")])
        try:
            async with Deadline(deadline):
                body = await response.aread()
        except (UpstreamTimeout, TimeoutError):
            self._settle_failure(request_id, leased, started, 504)
            raise errors.upstream_timeout() from None
        except UpstreamError:
            self._settle_failure(request_id, leased, started, 502)
            raise errors.upstream_broken("cut its answer off") from None
        except BaseException:
            self._settle_failure(request_id, leased, started, 499)
            raise
        finally:
            await response.aclose()
        if response.status_code != 200:
            error_reply = self._upstream_error(response.status_code, body)
            self._settle_failure(request_id, leased, started, error_reply.status)
            return BodyReply(status=error_reply.status, body=error_reply.body, headers=headers)
        outcome = _body_outcome(body, completion)
        if outcome is None:
            self._settle_failure(request_id, leased, started, 502)
            raise errors.upstream_broken("sent an answer that is not a JSON object")
        self._settler.submit(request_id, outcome, started, leased=leased)
        return BodyReply(status=200, body=body, headers=headers)

    async def models(self, secret: str) -> BodyReply:
        info = await self._control.verify(secret)
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

    def _settle_failure(
        self, request_id: str, leased: LeasedReservation | None, started: float, http_status: int
    ) -> None:
        outcome = Outcome(
            input_tokens=0,
            output_tokens=0,
            status=UsageStatus.UPSTREAM_ERROR,
            source=UsageSource.ESTIMATED,
            http_status=http_status,
        )
        self._settler.submit(request_id, outcome, started, leased=leased)


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
