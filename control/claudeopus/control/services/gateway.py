"""GatewayService: the edge's authorize and settle calls."""

from __future__ import annotations

import grpc

from claudeopus.control.domain import gateway
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, format_name
from claudeopus.control.services import convert
from claudeopus.control.services.auth import require_service
from claudeopus.control.services.errors import rpc
from claudeopus.v1 import gateway_pb2, gateway_pb2_grpc

Ctx = grpc.aio.ServicerContext


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, service_token: str, clock: Clock, policy: gateway.OutputPolicy) -> None:
        self._token = service_token
        self._clock = clock
        self._policy = policy

    @rpc
    async def VerifyApiKey(
        self, request: gateway_pb2.VerifyApiKeyRequest, context: Ctx[object, object]
    ) -> gateway_pb2.VerifyApiKeyResponse:
        require_service(context, self._token)
        key = await gateway.verify_key(request.key_hash, self._clock())
        return gateway_pb2.VerifyApiKeyResponse(
            api_key=format_name(API_KEYS, key.id),
            account=format_name(ACCOUNTS, key.account.id),
            allowed_models=key.allowed_models or [],
        )

    @rpc
    async def Authorize(
        self, request: gateway_pb2.AuthorizeRequest, context: Ctx[object, object]
    ) -> gateway_pb2.AuthorizeResponse:
        require_service(context, self._token)
        authorized = await gateway.authorize(
            request_id=request.request_id,
            key_hash=request.key_hash,
            model=request.model,
            estimated_input_tokens=request.estimated_input_tokens,
            max_output_tokens=request.max_output_tokens,
            stream=request.stream,
            now=self._clock(),
            policy=self._policy,
        )
        record = authorized.record
        return gateway_pb2.AuthorizeResponse(
            api_key=format_name(API_KEYS, record.api_key_id),  # type: ignore[attr-defined]
            account=format_name(ACCOUNTS, record.account_id),  # type: ignore[attr-defined]
            reserve_time=convert.timestamp(record.created_at),
            max_output_tokens=authorized.enforced_output_tokens,
        )

    @rpc
    async def Settle(
        self, request: gateway_pb2.SettleRequest, context: Ctx[object, object]
    ) -> gateway_pb2.SettleResponse:
        require_service(context, self._token)
        latency_us = request.latency.seconds * 1_000_000 + request.latency.nanos // 1000
        settlement = await gateway.settle(
            gateway.SettleInput(
                request_id=request.request_id,
                input_tokens=request.input_tokens,
                output_tokens=request.output_tokens,
                latency_us=latency_us,
                status=request.status,
                source=request.source,
                http_status=request.http_status,
            ),
            self._clock(),
        )
        return gateway_pb2.SettleResponse(
            usage_record=convert.usage_record(settlement.record), already_settled=settlement.already_settled
        )
