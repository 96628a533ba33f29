"""The control plane served in-process for tests: a real ``ControlServer``, a channel, the root admin.

The control API tests (tests/control/test_*_api.py, test_grpc.py) drive this over the wire with
the generated stubs; each wraps it in its own small vocabulary of calls.

Example::

    async with in_process_control(database_url, clock=FakeClock(T0)) as control:
        await control.accounts.GetAccount(request, metadata=bearer(control.admin_secret))
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from claudeopus.client import ClaudeOpusClient
from claudeopus.control.domain.clock import utc_now
from claudeopus.control.server import ControlServer
from claudeopus.control.settings import ControlSettings
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    budgets_pb2_grpc,
    gateway_pb2_grpc,
    prices_pb2_grpc,
    usage_pb2_grpc,
)
from tests.support.clock import FakeClock
from tests.support.prices import FREE_MODELS, serve_free_over
from tests.support.rpc import bearer


@dataclass
class InProcessControl:
    """A running control plane, a channel to it, a stub per service, and the bootstrapped root admin."""

    server: ControlServer
    channel: grpc.aio.Channel
    clock: FakeClock | None
    service_token: str
    admin: accounts_pb2.Account
    admin_key: str  # the admin's management key: its resource name
    admin_secret: str
    accounts: accounts_pb2_grpc.AccountServiceAsyncStub = field(init=False)
    api_keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub = field(init=False)
    budgets: budgets_pb2_grpc.BudgetServiceAsyncStub = field(init=False)
    prices: prices_pb2_grpc.PriceServiceAsyncStub = field(init=False)
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub = field(init=False)
    usage: usage_pb2_grpc.UsageServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = accounts_pb2_grpc.AccountServiceStub(self.channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.budgets = budgets_pb2_grpc.BudgetServiceStub(self.channel)
        self.prices = prices_pb2_grpc.PriceServiceStub(self.channel)
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self.channel)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def admin_client(self) -> ClaudeOpusClient:
        """The hand-written client, as the root admin."""
        return ClaudeOpusClient(self.target, key=self.admin_secret)

    async def new_account(self, parent: str, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_USER) -> str:
        """A new account below ``parent`` (empty: below the admin), created by the admin; its name."""
        spec = accounts_pb2.Account(email=f"a-{secrets.token_hex(6)}@example.com", role=role)
        request = accounts_pb2.CreateAccountRequest(parent=parent, account=spec)
        return (await self.accounts.CreateAccount(request, metadata=bearer(self.admin_secret))).name

    async def new_key(
        self, parent: str, scope: api_keys_pb2.Scope.ValueType = api_keys_pb2.SCOPE_INFERENCE
    ) -> tuple[str, str]:
        """A new key on the account ``parent``, created by the admin: (key name, secret)."""
        request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=api_keys_pb2.ApiKey(scopes=[scope]))
        created = await self.api_keys.CreateApiKey(request, metadata=bearer(self.admin_secret))
        return created.api_key.name, created.secret


@asynccontextmanager
async def in_process_control(
    database_url: str,
    *,
    clock: FakeClock | None = None,
    free_models: tuple[str, ...] = FREE_MODELS,
    **settings: Any,
) -> AsyncIterator[InProcessControl]:
    """Serve ``database_url`` on a free loopback port with a fresh service token, bootstrap the root
    admin (root@example.com) over BootstrapAdmin and price ``free_models`` at zero on its account.

    ``clock`` is the server's clock (the real one when None); ``settings`` override ControlSettings.
    """
    token = secrets.token_urlsafe(32)
    control_settings = ControlSettings(
        grpc_address="127.0.0.1:0", database_url=database_url, service_token=token, **settings
    )
    async with (
        ControlServer(control_settings, clock=clock or utc_now) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        assert server.port > 0
        boot = await accounts_pb2_grpc.AccountServiceStub(channel).BootstrapAdmin(
            accounts_pb2.BootstrapAdminRequest(
                email="root@example.com", display_name="Root", bootstrap_token=server.bootstrap_token
            )
        )
        if free_models:
            await serve_free_over(channel, boot.secret, free_models)  # only priced models are served
        yield InProcessControl(
            server=server,
            channel=channel,
            clock=clock,
            service_token=token,
            admin=boot.account,
            admin_key=boot.api_key.name,
            admin_secret=boot.secret,
        )
