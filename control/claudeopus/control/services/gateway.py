"""GatewayService: the edge's calls (batched authorize and settle, leases), translated to the ledger."""

from __future__ import annotations

from datetime import timedelta

import grpc

from claudeopus.control.domain import prices, validation
from claudeopus.control.domain.auth_cache import AuthCache
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, format_name
from claudeopus.control.ledger import authorize, keys, reservations, settle
from claudeopus.control.ledger.leases import ends, grant, recover
from claudeopus.control.ledger.leases.rows import LeasedReservation
from claudeopus.control.services import convert
from claudeopus.control.services.auth import require_service
from claudeopus.control.services.errors import rpc, status_of
from claudeopus.v1 import gateway_pb2, gateway_pb2_grpc

Ctx = grpc.aio.ServicerContext


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self, service_token: str, clock: Clock, policy: authorize.OutputPolicy, cache: AuthCache | None = None
    ) -> None:
        self._token = service_token
        self._clock = clock
        self._policy = policy
        self._cache = cache if cache is not None else AuthCache()

    @rpc
    async def VerifyApiKey(
        self, request: gateway_pb2.VerifyApiKeyRequest, context: Ctx[object, object]
    ) -> gateway_pb2.VerifyApiKeyResponse:
        require_service(context, self._token)
        found = await keys.key_context(request.key_hash, self._clock(), self._cache)
        return gateway_pb2.VerifyApiKeyResponse(
            api_key=format_name(API_KEYS, found.key.id),
            account=format_name(ACCOUNTS, found.key.account.id),
            allowed_models=keys.allowed_models(found),
            priced_models=await prices.priced_models(found.key.account),
        )

    @rpc
    async def BatchAuthorize(
        self, request: gateway_pb2.BatchAuthorizeRequest, context: Ctx[object, object]
    ) -> gateway_pb2.BatchAuthorizeResponse:
        require_service(context, self._token)
        batch = [_authorize_input(item) for item in request.requests]
        results = await authorize.authorize_batch(batch, self._clock(), self._policy, self._cache)
        return gateway_pb2.BatchAuthorizeResponse(results=[_authorize_result(result) for result in results])

    @rpc
    async def BatchSettle(
        self, request: gateway_pb2.BatchSettleRequest, context: Ctx[object, object]
    ) -> gateway_pb2.BatchSettleResponse:
        require_service(context, self._token)
        results = await settle.settle_batch([_settle_input(item) for item in request.requests], self._clock())
        return gateway_pb2.BatchSettleResponse(results=[_settle_result(result) for result in results])

    @rpc
    async def GrantLease(
        self, request: gateway_pb2.GrantLeaseRequest, context: Ctx[object, object]
    ) -> gateway_pb2.GrantLeaseResponse:
        require_service(context, self._token)
        wanted = authorize.Wanted.checked(
            request.model, request.estimated_input_tokens, request.max_output_tokens, stream=False
        )
        ttl = timedelta(seconds=request.ttl.seconds, microseconds=request.ttl.nanos // 1000)
        granted = await grant.grant(
            key_hash=request.key_hash, wanted=wanted, ttl=ttl, now=self._clock(), policy=self._policy, cache=self._cache
        )
        if granted is None:
            return gateway_pb2.GrantLeaseResponse()
        response = gateway_pb2.GrantLeaseResponse(
            lease_id=str(granted.lease_id),
            unlimited=granted.unlimited,
            input_tokens=granted.amounts.input_tokens,
            output_tokens=granted.amounts.output_tokens,
            cost_micros=granted.amounts.cost_micros,
            counts_cost=granted.price is not None,
            default_output_tokens=granted.default_output_tokens,
            caps_output=granted.caps_output,
        )
        response.ttl.FromTimedelta(granted.ttl)
        if granted.price is not None:
            response.input_micros_per_million = granted.price.input_micros_per_million
            response.output_micros_per_million = granted.price.output_micros_per_million
        return response

    @rpc
    async def ReturnLeases(
        self, request: gateway_pb2.ReturnLeasesRequest, context: Ctx[object, object]
    ) -> gateway_pb2.ReturnLeasesResponse:
        require_service(context, self._token)
        uses = [
            ends.LeaseUse(
                lease_id=use.lease_id,
                requests=use.requests,
                amounts=reservations.Amounts(use.input_tokens, use.output_tokens, use.cost_micros),
            )
            for use in request.leases
        ]
        await ends.return_leases(uses)
        return gateway_pb2.ReturnLeasesResponse()

    @rpc
    async def RecoverLeases(
        self, request: gateway_pb2.RecoverLeasesRequest, context: Ctx[object, object]
    ) -> gateway_pb2.RecoverLeasesResponse:
        require_service(context, self._token)
        recovered = [
            recover.RecoveredLease(
                lease_id=entry.lease_id,
                lost=[
                    recover.LostRequest(request_id=lost.request_id, reservation=_leased_input(lost.reservation))
                    for lost in entry.lost
                ],
                release_rest=entry.release_rest,
            )
            for entry in request.leases
        ]
        return gateway_pb2.RecoverLeasesResponse(rows_opened=await recover.recover_leases(recovered))


def _settle_input(request: gateway_pb2.SettleRequest) -> settle.SettleInput:
    return settle.SettleInput(
        leased=_leased_input(request.leased) if request.HasField("leased") else None,
        request_id=request.request_id,
        input_tokens=request.input_tokens,
        output_tokens=request.output_tokens,
        latency_us=request.latency.seconds * 1_000_000 + request.latency.nanos // 1000,
        status=request.status,
        source=request.source,
        http_status=request.http_status,
    )


def _leased_input(leased: gateway_pb2.LeasedReservation) -> LeasedReservation:
    reserve_time = leased.reserve_time
    return LeasedReservation(
        lease_id=leased.lease_id,
        estimated_input_tokens=leased.estimated_input_tokens,
        max_output_tokens=leased.max_output_tokens,
        reserved_cost_micros=leased.reserved_cost_micros,
        stream=leased.stream,
        reserve_time=validation.timestamp("leased.reserve_time", reserve_time.seconds, reserve_time.nanos),
    )


def _settle_result(result: settle.SettleResult) -> gateway_pb2.SettleResult:
    if result.error is None:
        return gateway_pb2.SettleResult(request_id=result.request_id, already_settled=result.already_settled)
    return gateway_pb2.SettleResult(request_id=result.request_id, status=status_of(result.error))


def _authorize_input(request: gateway_pb2.AuthorizeRequest) -> authorize.AuthorizeInput:
    return authorize.AuthorizeInput(
        request_id=request.request_id,
        key_hash=request.key_hash,
        model=request.model,
        estimated_input_tokens=request.estimated_input_tokens,
        max_output_tokens=request.max_output_tokens,
        stream=request.stream,
        choices=request.choices,
    )


def _authorize_response(authorized: authorize.Authorized) -> gateway_pb2.AuthorizeResponse:
    record = authorized.record
    return gateway_pb2.AuthorizeResponse(
        api_key=format_name(API_KEYS, record.api_key_id),
        account=format_name(ACCOUNTS, record.account_id),
        reserve_time=convert.timestamp(record.created_at),
        max_output_tokens=authorized.enforced_output_tokens,
    )


def _authorize_result(result: authorize.AuthorizeResult) -> gateway_pb2.AuthorizeResult:
    if result.error is None:
        assert result.authorized is not None
        return gateway_pb2.AuthorizeResult(
            request_id=result.request_id, response=_authorize_response(result.authorized)
        )
    return gateway_pb2.AuthorizeResult(request_id=result.request_id, status=status_of(result.error))
