"""ClaudeOpusClient: the management services behind one small async object."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from claudeopus.client._auth import BearerAuthInterceptor
from claudeopus.client._errors import from_rpc_error
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0

ROLES = {"reseller": accounts_pb2.ROLE_RESELLER, "user": accounts_pb2.ROLE_USER}
SCOPES = {"inference": api_keys_pb2.SCOPE_INFERENCE, "management": api_keys_pb2.SCOPE_MANAGEMENT}


class ClaudeOpusClient:
    """An async client for the management API; use it as an async context manager.

    ``target`` is ``host:port`` of the control plane; ``key`` a management key
    (not needed for :meth:`bootstrap_admin`). Every failed call raises a
    :class:`claudeopus.client.ClaudeOpusError` subclass carrying the ErrorInfo reason.
    """

    def __init__(
        self,
        target: str,
        *,
        key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        interceptors = [BearerAuthInterceptor(key)] if key else []
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
        self._timeout = timeout
        self.accounts = accounts_pb2_grpc.AccountServiceStub(self._channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(self._channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self._channel)

    async def __aenter__(self) -> ClaudeOpusClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    # -- accounts -------------------------------------------------------------

    async def bootstrap_admin(self, email: str, display_name: str = "") -> accounts_pb2.BootstrapAdminResponse:
        """Create the root admin and its management key (only once, only from the control host)."""
        request = accounts_pb2.BootstrapAdminRequest(email=email, display_name=display_name)
        return await self._call(self.accounts.BootstrapAdmin(request, timeout=self._timeout))

    async def create_account(
        self, *, email: str, role: str = "user", display_name: str = "", parent: str = "", request_id: str = ""
    ) -> accounts_pb2.Account:
        account = accounts_pb2.Account(
            email=email, display_name=display_name, role=ROLES.get(role, accounts_pb2.ROLE_UNSPECIFIED)
        )
        request = accounts_pb2.CreateAccountRequest(parent=parent, account=account, request_id=request_id)
        return await self._call(self.accounts.CreateAccount(request, timeout=self._timeout))

    async def get_account(self, name: str) -> accounts_pb2.Account:
        request = accounts_pb2.GetAccountRequest(name=name)
        return await self._call(self.accounts.GetAccount(request, timeout=self._timeout))

    # -- API keys -------------------------------------------------------------

    async def create_api_key(
        self,
        *,
        parent: str = "",
        display_name: str = "",
        scopes: Iterable[str] = ("inference",),
        allowed_models: Iterable[str] = (),
        expire_time: datetime | None = None,
        request_id: str = "",
    ) -> api_keys_pb2.CreateApiKeyResponse:
        """Create a key; the response's ``secret`` is shown this once and never again."""
        key = api_keys_pb2.ApiKey(
            display_name=display_name,
            scopes=[SCOPES.get(s, api_keys_pb2.SCOPE_UNSPECIFIED) for s in scopes],
            allowed_models=list(allowed_models),
        )
        if expire_time is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(expire_time)
            key.expire_time.CopyFrom(stamp)
        request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=key, request_id=request_id)
        return await self._call(self.api_keys.CreateApiKey(request, timeout=self._timeout))

    async def get_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        request = api_keys_pb2.GetApiKeyRequest(name=name)
        return await self._call(self.api_keys.GetApiKey(request, timeout=self._timeout))

    async def revoke_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        request = api_keys_pb2.RevokeApiKeyRequest(name=name)
        return await self._call(self.api_keys.RevokeApiKey(request, timeout=self._timeout))

    # -- usage ----------------------------------------------------------------

    async def list_usage_records(
        self, *, parent: str = "", api_key: str = "", page_size: int = 0, page_token: str = ""
    ) -> usage_pb2.ListUsageRecordsResponse:
        request = usage_pb2.ListUsageRecordsRequest(
            parent=parent, api_key=api_key, page_size=page_size, page_token=page_token
        )
        return await self._call(self.usage.ListUsageRecords(request, timeout=self._timeout))

    async def iter_usage_records(
        self, *, parent: str = "", api_key: str = "", page_size: int = 0
    ) -> AsyncIterator[usage_pb2.UsageRecord]:
        """Every usage record of the subtree, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = await self.list_usage_records(parent=parent, api_key=api_key, page_size=page_size, page_token=token)
            for record in page.usage_records:
                yield record
            token = page.next_page_token
            if not token:
                return
