"""ApiKeyService: create (secret shown once), get, revoke."""

from __future__ import annotations

import grpc

from claudeopus.control.domain import accounts, api_keys, validation
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, parse_id, parse_optional_id
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.v1 import api_keys_pb2, api_keys_pb2_grpc

Ctx = grpc.aio.ServicerContext


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @rpc
    async def CreateApiKey(
        self, request: api_keys_pb2.CreateApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.CreateApiKeyResponse:
        now = self._clock()
        principal = await management_principal(context, now)
        account = await accounts.account_in_subtree(
            principal, parse_optional_id("parent", ACCOUNTS, request.parent), "parent"
        )
        spec = request.api_key
        issued = await api_keys.create_api_key(
            principal,
            account=account,
            display_name=spec.display_name,
            scopes=list(spec.scopes),
            allowed_models=list(spec.allowed_models),
            expires_at=(
                validation.timestamp("api_key.expire_time", spec.expire_time.seconds, spec.expire_time.nanos)
                if spec.HasField("expire_time")
                else None
            ),
            request_id=request.request_id,
            now=now,
        )
        return api_keys_pb2.CreateApiKeyResponse(api_key=convert.api_key(issued.key), secret=issued.secret)

    @rpc
    async def GetApiKey(
        self, request: api_keys_pb2.GetApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ApiKey:
        principal = await management_principal(context, self._clock())
        key = await api_keys.key_in_subtree(principal, parse_id("name", API_KEYS, request.name))
        return convert.api_key(key)

    @rpc
    async def RevokeApiKey(
        self, request: api_keys_pb2.RevokeApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ApiKey:
        now = self._clock()
        principal = await management_principal(context, now)
        key = await api_keys.revoke_api_key(principal, parse_id("name", API_KEYS, request.name), now)
        return convert.api_key(key)
