"""ApiKeyService: create and rotate (secret shown once), get, list, update, revoke."""

from __future__ import annotations

import grpc

from claudeopus.control.domain import accounts, api_key_rotation, api_key_updates, api_keys, validation
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, parse_id, parse_optional_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.control.services.masks import update_paths
from claudeopus.v1 import api_keys_pb2, api_keys_pb2_grpc

Ctx = grpc.aio.ServicerContext


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, codec: PageTokenCodec, clock: Clock) -> None:
        self._codec = codec
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
        return api_keys_pb2.CreateApiKeyResponse(api_key=convert.api_key(issued.key, now), secret=issued.secret)

    @rpc
    async def GetApiKey(
        self, request: api_keys_pb2.GetApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ApiKey:
        now = self._clock()
        principal = await management_principal(context, now)
        key = await api_keys.key_in_subtree(principal, parse_id("name", API_KEYS, request.name))
        return convert.api_key(key, now)

    @rpc
    async def ListApiKeys(
        self, request: api_keys_pb2.ListApiKeysRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ListApiKeysResponse:
        now = self._clock()
        principal = await management_principal(context, now)
        account = await accounts.account_in_subtree(
            principal, parse_optional_id("parent", ACCOUNTS, request.parent), "parent"
        )
        page = await api_keys.list_api_keys(
            principal,
            self._codec,
            account=account,
            show_revoked=request.show_revoked,
            size=request.page_size,
            token=request.page_token,
        )
        return api_keys_pb2.ListApiKeysResponse(
            api_keys=[convert.api_key(k, now) for k in page.keys], next_page_token=page.next_page_token
        )

    @rpc
    async def UpdateApiKey(
        self, request: api_keys_pb2.UpdateApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ApiKey:
        now = self._clock()
        principal = await management_principal(context, now)
        spec = request.api_key
        key = await api_key_updates.update_api_key(
            principal,
            parse_id("api_key.name", API_KEYS, spec.name),
            paths=update_paths(request.update_mask, request.api_key, api_key_updates.UPDATABLE_FIELDS),
            update=api_key_updates.KeyUpdate(
                display_name=spec.display_name,
                scopes=list(spec.scopes),
                allowed_models=list(spec.allowed_models),
                expire_time=(
                    (spec.expire_time.seconds, spec.expire_time.nanos) if spec.HasField("expire_time") else None
                ),
            ),
            now=now,
        )
        return convert.api_key(key, now)

    @rpc
    async def RevokeApiKey(
        self, request: api_keys_pb2.RevokeApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.ApiKey:
        now = self._clock()
        principal = await management_principal(context, now)
        key = await api_keys.revoke_api_key(principal, parse_id("name", API_KEYS, request.name), now)
        return convert.api_key(key, now)

    @rpc
    async def RotateApiKey(
        self, request: api_keys_pb2.RotateApiKeyRequest, context: Ctx[object, object]
    ) -> api_keys_pb2.RotateApiKeyResponse:
        now = self._clock()
        principal = await management_principal(context, now)
        key_id = parse_id("name", API_KEYS, request.name)
        grace = api_key_rotation.grace_period(request.grace_period.seconds, request.grace_period.nanos)
        rotated = await api_key_rotation.rotate_api_key(principal, key_id, grace=grace, now=now)
        return api_keys_pb2.RotateApiKeyResponse(api_key=convert.api_key(rotated.key, now), secret=rotated.secret)
