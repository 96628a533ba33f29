"""Control's internal GatewayService over gRPC: the edge's one client of it.

The only edge module that imports the gateway's generated code: it turns the edge's own
metering types into the gateway's messages and the answers back, and every gRPC failure into
a :class:`~claudeopus.client.ClaudeOpusError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2

from claudeopus.client import ClaudeOpusError, error_of, from_rpc_error
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.port import AuthorizeCall
from claudeopus.edge.metering.types import KeyInfo, Lease, LeasedReservation, LeaseUse, RecoveredLease, Settlement
from claudeopus.v1 import error_reason_pb2, gateway_pb2, gateway_pb2_grpc, usage_pb2

__all__ = ["GrpcControl"]


class GrpcControl:
    """The :class:`~claudeopus.edge.metering.port.ControlPort` over one shared gRPC channel.

    Example::

        control = GrpcControl(channel, service_token, timeout=5.0)
        [cap] = await control.authorize_batch([AuthorizeCall(request_id, key_hash, completion)])
    """

    def __init__(self, channel: grpc.aio.Channel, service_token: str, timeout: float) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        self._timeout = timeout

    async def verify(self, key_hash: bytes) -> KeyInfo:
        """What the key may use; raises :class:`ClaudeOpusError` when control refuses it."""
        request = gateway_pb2.VerifyApiKeyRequest(key_hash=key_hash)
        try:
            reply = await self._stub.VerifyApiKey(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
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

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
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


def _settle_request(settle: Settlement) -> gateway_pb2.SettleRequest:
    latency = duration_pb2.Duration()
    latency.FromNanoseconds(settle.latency_ns)
    outcome = settle.outcome
    request = gateway_pb2.SettleRequest(
        request_id=settle.request_id,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        latency=latency,
        status=usage_pb2.UsageStatus.ValueType(outcome.status),
        source=usage_pb2.UsageSource.ValueType(outcome.source),
        http_status=outcome.http_status,
    )
    if settle.leased is not None:
        _fill_leased(request.leased, settle.leased)
    return request


def _fill_leased(message: gateway_pb2.LeasedReservation, leased: LeasedReservation) -> None:
    message.lease_id = leased.lease_id
    message.estimated_input_tokens = leased.estimated_input_tokens
    message.max_output_tokens = leased.max_output_tokens
    message.reserved_cost_micros = leased.reserved_cost_micros
    message.stream = leased.stream
    message.reserve_time.FromNanoseconds(leased.reserve_time_ns)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _result_error(result: gateway_pb2.SettleResult) -> ClaudeOpusError | None:
    if not result.error_code:
        return None
    code = _CODES_BY_NUMBER.get(result.error_code, grpc.StatusCode.UNKNOWN)
    reason = error_reason_pb2.ErrorReason.Name(result.error_reason) if result.error_reason else ""
    return error_of(code, result.error_message, reason)


def _authorize_answer(result: gateway_pb2.AuthorizeResult) -> int | ClaudeOpusError:
    if not result.error_code:
        return result.response.max_output_tokens
    code = _CODES_BY_NUMBER.get(result.error_code, grpc.StatusCode.UNKNOWN)
    reason = error_reason_pb2.ErrorReason.Name(result.error_reason) if result.error_reason else ""
    return error_of(code, result.error_message, reason, dict(result.field_violations), dict(result.error_metadata))
