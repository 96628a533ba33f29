"""AsyncClient (alias ClaudeOpusClient): the management services behind one small async object."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from types import TracebackType

import grpc

from claudeopus import tls
from claudeopus.client import _requests as build
from claudeopus.client._async_billing import BillingCalls
from claudeopus.client._async_calls import pages
from claudeopus.client._auth import BearerAuthInterceptor
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    budgets_pb2_grpc,
    prices_pb2_grpc,
    usage_pb2_grpc,
)

DEFAULT_TIMEOUT = 10.0


class ClaudeOpusClient(BillingCalls):
    """An async client for the management API; use it as an async context manager.

    ``target`` is ``host:port`` of the control plane; ``key`` a management key or a
    session token from :meth:`login` (not needed for :meth:`bootstrap_admin` and
    :meth:`login`). ``tls_ca`` (the PEM bundle that signed control's certificate) makes
    the channel TLS; ``tls_cert`` / ``tls_key`` add a client certificate for a control plane
    that requires one (mutual TLS); ``credentials`` takes ready-made gRPC credentials instead.
    Plain text to a host other than this machine is refused (:class:`claudeopus.tls.PlainTextRefused`)
    unless ``insecure=True``.
    Every failed call raises a :class:`claudeopus.client.ClaudeOpusError` subclass carrying
    the ErrorInfo reason.

    Example::

        async with AsyncClient("127.0.0.1:50051", key="sk-co-...") as client:
            shop = await client.create_account(email="shop@example.com", role="reseller")
            async for key in client.iter_api_keys(parent=shop.name):
                print(key.name, key.prefix)

        # over TLS, with a client certificate
        async with AsyncClient("control.internal:50051", key="sk-co-...", tls_ca="ca.pem",
                               tls_cert="admin.pem", tls_key="admin.key") as client:
            print(await client.get_account("accounts/1"))
    """

    def __init__(
        self,
        target: str,
        *,
        key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls_ca: tls.PathLike | None = None,
        tls_cert: tls.PathLike | None = None,
        tls_key: tls.PathLike | None = None,
        insecure: bool = False,
    ) -> None:
        if tls_ca or tls_cert or tls_key:
            if credentials is not None:
                raise ValueError("pass either credentials or tls_ca / tls_cert / tls_key, not both")
            credentials = tls.channel_credentials(tls_ca, tls_cert, tls_key)
        if credentials is None:
            tls.check_plain_text(target, insecure=insecure)
        interceptors = [BearerAuthInterceptor(key)] if key else []
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
        self._timeout = timeout
        self.accounts = accounts_pb2_grpc.AccountServiceStub(self._channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(self._channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self._channel)
        self.prices = prices_pb2_grpc.PriceServiceStub(self._channel)
        self.budgets = budgets_pb2_grpc.BudgetServiceStub(self._channel)

    async def __aenter__(self) -> ClaudeOpusClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- accounts -------------------------------------------------------------

    async def bootstrap_admin(
        self, email: str, display_name: str = "", *, token: str = ""
    ) -> accounts_pb2.BootstrapAdminResponse:
        """Create the root admin and its management key (only once, only from the control host).

        ``token`` is the one-time token from the file control named at start.
        """
        request = build.bootstrap_admin(email, display_name, token)
        return await self._call(self.accounts.BootstrapAdmin(request, timeout=self._timeout))

    async def login(self, email: str, password: str) -> accounts_pb2.LoginResponse:
        """A session token for ``email``; pass it as ``key`` to a new client."""
        request = accounts_pb2.LoginRequest(email=email, password=password)
        return await self._call(self.accounts.Login(request, timeout=self._timeout))

    async def create_account(
        self, *, email: str, role: str = "user", display_name: str = "", parent: str = "", request_id: str = ""
    ) -> accounts_pb2.Account:
        request = build.create_account(email, role, display_name, parent, request_id)
        return await self._call(self.accounts.CreateAccount(request, timeout=self._timeout))

    async def get_account(self, name: str) -> accounts_pb2.Account:
        request = accounts_pb2.GetAccountRequest(name=name)
        return await self._call(self.accounts.GetAccount(request, timeout=self._timeout))

    async def list_accounts(
        self,
        *,
        parent: str = "",
        role: str | None = None,
        state: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> accounts_pb2.ListAccountsResponse:
        request = build.list_accounts(parent, page_size, page_token, role, state)
        return await self._call(self.accounts.ListAccounts(request, timeout=self._timeout))

    def iter_accounts(
        self, *, parent: str = "", role: str | None = None, state: str | None = None, page_size: int = 0
    ) -> AsyncIterator[accounts_pb2.Account]:
        """Every child account of ``parent``, oldest first, fetching pages as needed."""

        async def page(token: str) -> tuple[Iterable[accounts_pb2.Account], str]:
            reply = await self.list_accounts(
                parent=parent, role=role, state=state, page_size=page_size, page_token=token
            )
            return reply.accounts, reply.next_page_token

        return pages(page)

    async def update_account(
        self, name: str, *, display_name: str | None = None, email: str | None = None, role: str | None = None
    ) -> accounts_pb2.Account:
        """Change only the fields given (an update mask is built from them)."""
        request = build.update_account(name, display_name, email, role)
        return await self._call(self.accounts.UpdateAccount(request, timeout=self._timeout))

    async def delete_account(self, name: str) -> None:
        request = accounts_pb2.DeleteAccountRequest(name=name)
        await self._call(self.accounts.DeleteAccount(request, timeout=self._timeout))

    async def suspend_account(self, name: str) -> accounts_pb2.Account:
        request = accounts_pb2.SuspendAccountRequest(name=name)
        return await self._call(self.accounts.SuspendAccount(request, timeout=self._timeout))

    async def resume_account(self, name: str) -> accounts_pb2.Account:
        request = accounts_pb2.ResumeAccountRequest(name=name)
        return await self._call(self.accounts.ResumeAccount(request, timeout=self._timeout))

    async def set_password(self, password: str, *, name: str = "", current_password: str = "") -> None:
        """Set ``name``'s password (default: yours; changing your own needs ``current_password``)."""
        request = accounts_pb2.SetPasswordRequest(name=name, password=password, current_password=current_password)
        await self._call(self.accounts.SetPassword(request, timeout=self._timeout))

    async def set_account_policy(
        self,
        name: str,
        *,
        allowed_models: Iterable[str] | None = None,
        deny_management_keys: bool | None = None,
        max_key_lifetime: timedelta | None = None,
        clear_max_key_lifetime: bool = False,
    ) -> accounts_pb2.Account:
        """Set the key policy of an account below the caller; only the fields given change."""
        request = build.set_account_policy(
            name, allowed_models, deny_management_keys, max_key_lifetime, clear_max_key_lifetime
        )
        return await self._call(self.accounts.SetAccountPolicy(request, timeout=self._timeout))

    async def logout(self) -> None:
        """End the session this client authenticates with."""
        await self._call(self.accounts.Logout(accounts_pb2.LogoutRequest(), timeout=self._timeout))

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
        request = build.create_api_key(parent, display_name, scopes, allowed_models, expire_time, request_id)
        return await self._call(self.api_keys.CreateApiKey(request, timeout=self._timeout))

    async def get_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        request = api_keys_pb2.GetApiKeyRequest(name=name)
        return await self._call(self.api_keys.GetApiKey(request, timeout=self._timeout))

    async def list_api_keys(
        self, *, parent: str = "", show_revoked: bool = False, page_size: int = 0, page_token: str = ""
    ) -> api_keys_pb2.ListApiKeysResponse:
        request = api_keys_pb2.ListApiKeysRequest(
            parent=parent, show_revoked=show_revoked, page_size=page_size, page_token=page_token
        )
        return await self._call(self.api_keys.ListApiKeys(request, timeout=self._timeout))

    def iter_api_keys(
        self, *, parent: str = "", show_revoked: bool = False, page_size: int = 0
    ) -> AsyncIterator[api_keys_pb2.ApiKey]:
        """Every key of ``parent``, newest first, fetching pages as needed."""

        async def page(token: str) -> tuple[Iterable[api_keys_pb2.ApiKey], str]:
            reply = await self.list_api_keys(
                parent=parent, show_revoked=show_revoked, page_size=page_size, page_token=token
            )
            return reply.api_keys, reply.next_page_token

        return pages(page)

    async def update_api_key(
        self,
        name: str,
        *,
        display_name: str | None = None,
        scopes: Iterable[str] | None = None,
        allowed_models: Iterable[str] | None = None,
        expire_time: datetime | None = None,
        clear_expiry: bool = False,
    ) -> api_keys_pb2.ApiKey:
        """Change only the fields given; ``clear_expiry`` removes the expiry."""
        request = build.update_api_key(name, display_name, scopes, allowed_models, expire_time, clear_expiry)
        return await self._call(self.api_keys.UpdateApiKey(request, timeout=self._timeout))

    async def revoke_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        request = api_keys_pb2.RevokeApiKeyRequest(name=name)
        return await self._call(self.api_keys.RevokeApiKey(request, timeout=self._timeout))

    async def rotate_api_key(
        self, name: str, *, grace_period: timedelta | None = None
    ) -> api_keys_pb2.RotateApiKeyResponse:
        """A new secret (shown once); the old one keeps working for ``grace_period``."""
        request = build.rotate_api_key(name, grace_period)
        return await self._call(self.api_keys.RotateApiKey(request, timeout=self._timeout))


AsyncClient = ClaudeOpusClient
