"""The edge's client of control's internal GatewayService.

Control's answers become OpenAI-shaped errors here; if control cannot be
reached in time the edge fails closed with 503 and forwards nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2

from claudeopus import keys
from claudeopus.client import ClaudeOpusError, UnavailableError, from_rpc_error, from_status
from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest
from claudeopus.v1 import gateway_pb2, gateway_pb2_grpc, usage_pb2

_log = logging.getLogger(__name__)


UNAVAILABLE_MESSAGE = "The gateway could not check your API key right now; nothing was forwarded. Please retry."

# How a request that was never forwarded is settled: nothing used.
NOT_FORWARDED_STATUS = 503


class AuthorizeTimedOut(errors.ControlUnavailable):
    """Authorize passed its deadline: control may still have reserved, so the edge releases it."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key may use: the models priced on its chain (None: not known), narrowed by its own list (empty: all)."""

    allowed_models: tuple[str, ...]
    priced_models: frozenset[str] | None = None

    def may_use(self, model: object) -> bool:
        priced = self.priced_models is None or model in self.priced_models
        return priced and (not self.allowed_models or model in self.allowed_models)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a forwarded request ended, as settled with control."""

    input_tokens: int
    output_tokens: int
    status: usage_pb2.UsageStatus.ValueType
    source: usage_pb2.UsageSource.ValueType
    http_status: int


def openai_error(error: ClaudeOpusError) -> errors.OpenAIError:
    """Control's refusal of a key or a request, as the OpenAI error the client gets."""
    reason, message = error.reason, error.message
    if reason == "KEY_INVALID":
        return errors.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    if reason == "KEY_REVOKED":
        return errors.AuthenticationFailed(message, code="api_key_revoked")
    if reason == "KEY_EXPIRED":
        return errors.AuthenticationFailed(message, code="api_key_expired")
    if reason == "KEY_ROTATED":
        return errors.AuthenticationFailed(message, code="api_key_rotated")
    if reason in ("KEY_SCOPE_DENIED", "ACCOUNT_SUSPENDED"):
        return errors.PermissionDenied(message, code=reason.lower())
    if reason == "MODEL_NOT_ALLOWED":
        return errors.PermissionDenied(message, code="model_not_allowed", param="model")
    if reason == "MODEL_NOT_AVAILABLE":
        return errors.PermissionDenied(message, code="model_not_available", param="model")
    if reason == "BUDGET_EXHAUSTED":
        return errors.QuotaExceeded(message, code="insufficient_quota")
    if reason == "FIELD_INVALID":
        field = next(iter(error.field_violations), None)
        return errors.BadRequest(message, code="invalid_value", param=field)
    if reason == "SERVICE_CREDENTIAL_INVALID":
        _log.error("control refused the edge's service token; check CLAUDEOPUS_SERVICE_TOKEN on both")
    elif not isinstance(error, UnavailableError):
        _log.error("authorization failed with %s (%s)", error.code.name, reason or "no reason")
    return errors.ControlUnavailable(UNAVAILABLE_MESSAGE, code="control_unavailable")


def key_hash(secret: str) -> bytes:
    """The SHA-256 control knows a key by; a string that cannot be a key is refused here."""
    if not keys.looks_like_secret(secret):
        raise errors.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return keys.hash_secret_bytes(secret)


class ControlClient:
    """Authorize and settle over one shared gRPC channel.

    Example::

        control = ControlClient(channel, service_token, timeout=5.0)
        await control.authorize(request_id, secret, completion)
    """

    def __init__(self, channel: grpc.aio.Channel, service_token: str, timeout: float) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        self._timeout = timeout

    async def verify(self, secret: str) -> KeyInfo:
        request = gateway_pb2.VerifyApiKeyRequest(key_hash=key_hash(secret))
        try:
            reply = await self._stub.VerifyApiKey(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise openai_error(from_rpc_error(error)) from None
        return KeyInfo(allowed_models=tuple(reply.allowed_models), priced_models=frozenset(reply.priced_models))

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        """Reserve many requests in one call: per request, the output cap the upstream must get
        (0: none needed), or why control refused it.

        Raises :class:`ClaudeOpusError` when the call as a whole failed (DEADLINE_EXCEEDED: control
        may have reserved some of them all the same).
        """
        request = gateway_pb2.BatchAuthorizeRequest(
            requests=[
                gateway_pb2.AuthorizeRequest(
                    request_id=call.request_id,
                    key_hash=call.key_hash,
                    model=call.completion.model,
                    estimated_input_tokens=call.completion.input_token_bound,
                    max_output_tokens=call.completion.max_output_tokens,
                    stream=call.completion.stream,
                    choices=call.completion.choices,
                )
                for call in calls
            ]
        )
        try:
            reply = await self._stub.BatchAuthorize(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if len(reply.results) != len(calls):
            raise ClaudeOpusError(
                grpc.StatusCode.INTERNAL, "BatchAuthorize answered for a different number of requests"
            )
        return [_authorize_answer(result) for result in reply.results]

    async def settle(self, settle: Settle) -> None:
        """Settle once (a batch of one); raises :class:`ClaudeOpusError` (the settler decides about retries)."""
        [refused] = await self.settle_batch([settle])
        if refused is not None:
            raise refused

    async def settle_batch(self, settles: Sequence[Settle]) -> list[ClaudeOpusError | None]:
        """Settle many in one call: per settle, None when control took it, else why it refused it.

        Raises :class:`ClaudeOpusError` when the call as a whole failed (nothing was applied
        that a repeat could not apply again: settles are idempotent by request id).
        """
        request = gateway_pb2.BatchSettleRequest(requests=[_settle_request(settle) for settle in settles])
        try:
            reply = await self._stub.BatchSettle(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if len(reply.results) != len(settles):
            raise ClaudeOpusError(grpc.StatusCode.INTERNAL, "BatchSettle answered for a different number of settles")
        return [_result_error(result) for result in reply.results]

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        """A lease on the key's budgets for the completion's model, sized after it; None: none now.

        Raises :class:`ClaudeOpusError` when control refused (the key may not serve) or did not answer.
        """
        wanted = duration_pb2.Duration()
        wanted.FromNanoseconds(int(ttl * 1e9))
        request = gateway_pb2.GrantLeaseRequest(
            key_hash=key_hash,
            model=completion.model,
            estimated_input_tokens=completion.input_token_bound,
            max_output_tokens=completion.max_output_tokens,
            ttl=wanted,
        )
        try:
            reply = await self._stub.GrantLease(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if not reply.lease_id:
            return None
        return Lease(
            lease_id=reply.lease_id,
            ttl=reply.ttl.ToNanoseconds() / 1e9,
            unlimited=reply.unlimited,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            cost_micros=reply.cost_micros,
            prices=(reply.input_micros_per_million, reply.output_micros_per_million) if reply.counts_cost else None,
            default_output_tokens=reply.default_output_tokens,
            caps_output=reply.caps_output,
        )

    async def return_leases(self, uses: Sequence[LeaseUse]) -> None:
        """Give back what was not used of these leases; raises :class:`ClaudeOpusError`."""
        request = gateway_pb2.ReturnLeasesRequest(
            leases=[
                gateway_pb2.LeaseUse(
                    lease_id=use.lease_id,
                    requests=use.requests,
                    input_tokens=use.input_tokens,
                    output_tokens=use.output_tokens,
                    cost_micros=use.cost_micros,
                )
                for use in uses
            ]
        )
        try:
            await self._stub.ReturnLeases(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def recover_leases(self, recovered: Sequence[RecoveredLease]) -> int:
        """Close what a dead process of this edge held (its journal); rows opened. Raises :class:`ClaudeOpusError`."""
        request = gateway_pb2.RecoverLeasesRequest()
        for entry in recovered:
            message = request.leases.add(lease_id=entry.lease_id, release_rest=entry.release_rest)
            for request_id, leased in entry.lost:
                _fill_leased(message.lost.add(request_id=request_id).reservation, leased)
        try:
            reply = await self._stub.RecoverLeases(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return reply.rows_opened


@dataclass(frozen=True, slots=True)
class Lease:
    """A slice of a key's budgets control leased to this edge (GrantLease), as granted."""

    lease_id: str
    ttl: float
    unlimited: bool
    input_tokens: int
    output_tokens: int
    cost_micros: int
    prices: tuple[int, int] | None  # (input, output) per million tokens, when a cost budget counts
    default_output_tokens: int
    caps_output: bool


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """What this edge admitted from one lease in all, when it gives the lease back."""

    lease_id: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Leased:
    """What the edge reserved for one request it admitted from a lease; its settle opens the row."""

    lease_id: str
    estimated_input_tokens: int
    max_output_tokens: int
    reserved_cost_micros: int
    stream: bool
    reserve_time_ns: int  # wall clock, nanoseconds since 1970


@dataclass(frozen=True, slots=True)
class RecoveredLease:
    """A lease a dead process of this edge held, and the requests it admitted whose settle was lost."""

    lease_id: str
    lost: Sequence[tuple[str, Leased]]  # (request id, its reservation)
    release_rest: bool  # the journal is complete: control may release what the lease still holds


@dataclass(frozen=True, slots=True)
class AuthorizeCall:
    """One request to authorize: its id, its key's hash and what it asks for."""

    request_id: str
    key_hash: bytes
    completion: CompletionRequest


@dataclass(frozen=True, slots=True)
class Settle:
    """One settle to send: how the request ended and how long it took."""

    request_id: str
    outcome: Outcome
    latency_seconds: float
    # Control may never have opened this reservation (its authorize timed out): not finding it is fine.
    missing_ok: bool = False
    # Admitted from a lease: this settle opens the request's row.
    leased: Leased | None = None


def _settle_request(settle: Settle) -> gateway_pb2.SettleRequest:
    latency = duration_pb2.Duration()
    latency.FromNanoseconds(int(settle.latency_seconds * 1e9))
    outcome = settle.outcome
    request = gateway_pb2.SettleRequest(
        request_id=settle.request_id,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        latency=latency,
        status=outcome.status,
        source=outcome.source,
        http_status=outcome.http_status,
    )
    if settle.leased is not None:
        _fill_leased(request.leased, settle.leased)
    return request


def _fill_leased(message: gateway_pb2.LeasedReservation, leased: Leased) -> None:
    message.lease_id = leased.lease_id
    message.estimated_input_tokens = leased.estimated_input_tokens
    message.max_output_tokens = leased.max_output_tokens
    message.reserved_cost_micros = leased.reserved_cost_micros
    message.stream = leased.stream
    message.reserve_time.FromNanoseconds(leased.reserve_time_ns)


def _result_error(result: gateway_pb2.SettleResult) -> ClaudeOpusError | None:
    return from_status(result.status)


def _authorize_answer(result: gateway_pb2.AuthorizeResult) -> int | ClaudeOpusError:
    refused = from_status(result.status)
    return result.response.max_output_tokens if refused is None else refused
