"""Assemble and run the control plane's grpc.aio server.

Example::

    async with ControlServer(settings) as server:
        print("listening on", server.port)
        await server.wait_closed()

    # bootstrap the root admin in-process, before the port listens
    async with ControlServer(settings, bootstrap_as=("admin@example.com", "Administrator")) as server:
        admin_key = server.bootstrapped.key.secret if server.bootstrapped else None  # hand it over once, never log it
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from claudeopus import tls
from claudeopus.control.bootstrap_token import BootstrapGate
from claudeopus.control.db import open_database
from claudeopus.control.domain import accounts
from claudeopus.control.domain.auth_cache import AuthCache
from claudeopus.control.domain.clock import Clock, utc_now
from claudeopus.control.domain.errors import AlreadyExists
from claudeopus.control.domain.instance import ADMIN_BOOTSTRAPPED, PAGE_TOKEN_KEY, load_or_create_secret
from claudeopus.control.domain.logins import LoginPolicy
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.domain.passwords import PasswordPool
from claudeopus.control.domain.throttle import Throttle, Throttles
from claudeopus.control.ledger.authorize import OutputPolicy
from claudeopus.control.ledger.sweeper import ReservationSweeper
from claudeopus.control.models import InstanceValue
from claudeopus.control.services.accounts import AccountServicer
from claudeopus.control.services.api_keys import ApiKeyServicer
from claudeopus.control.services.budgets import BudgetServicer
from claudeopus.control.services.concurrency import ConcurrencyLimit
from claudeopus.control.services.gateway import GatewayServicer
from claudeopus.control.services.malformed import MalformedRequestInterceptor
from claudeopus.control.services.prices import PriceServicer
from claudeopus.control.services.usage import UsageServicer
from claudeopus.control.settings import ControlSettings
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    budgets_pb2,
    budgets_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    prices_pb2,
    prices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

_log = logging.getLogger(__name__)
SERVICE_NAMES = (
    accounts_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    budgets_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    prices_pb2.DESCRIPTOR.services_by_name["PriceService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
)
STOP_GRACE_SECONDS = 5.0


def throttles(settings: ControlSettings, clock: Clock = utc_now) -> Throttles:
    """The attempt limits of one control process, from its settings, on the server's clock."""

    def seconds() -> float:
        return clock().timestamp()

    return Throttles(
        login_per_address=Throttle(settings.login_attempts_per_minute, 60.0, clock=seconds),
        login_per_email=Throttle(settings.login_failures_per_hour, 3600.0, clock=seconds),
        email_probes=Throttle(settings.email_probes_per_hour, 3600.0, clock=seconds),
    )


def concurrency_limit(settings: ControlSettings) -> ConcurrencyLimit:
    """Each management method's bound; the gateway service (the edge's hot path) has none."""
    login = f"/{accounts_pb2.DESCRIPTOR.services_by_name['AccountService'].full_name}/Login"
    gateway = f"/{gateway_pb2.DESCRIPTOR.services_by_name['GatewayService'].full_name}/"
    return ConcurrencyLimit(
        settings.method_concurrency,
        {login: settings.login_concurrency},
        exempt=(gateway, "/grpc.health.", "/grpc.reflection."),
    )


def build_server(
    settings: ControlSettings,
    codec: PageTokenCodec,
    clock: Clock,
    logins: LoginPolicy,
    gate: BootstrapGate,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with every ClaudeOpus service, health checking and reflection."""
    server = grpc.aio.server(interceptors=[concurrency_limit(settings), MalformedRequestInterceptor()])
    accounts_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(codec, clock, logins, gate), server)
    api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(codec, clock), server)
    policy = OutputPolicy(settings.default_max_output_tokens, settings.model_max_output_tokens)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
        GatewayServicer(settings.service_token, clock, policy, AuthCache(settings.auth_cache_keys)), server
    )
    budgets_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(codec, clock), server)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(codec, clock), server)
    prices_pb2_grpc.add_PriceServiceServicer_to_server(PriceServicer(codec, clock), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


class ControlServer:
    """The control plane: database open, migrations applied, gRPC serving on ``settings.grpc_address``.

    The port is plain text unless ``settings.tls_cert`` / ``tls_key`` are set; with
    ``settings.tls_client_ca`` as well, clients must present a certificate it signed (mutual TLS).

    With ``bootstrap_as`` (email, display name) the root admin is created in-process before the
    port listens (``bootstrapped`` holds it; None when an admin existed). Otherwise a server that
    starts with no admin accepts BootstrapAdmin only with the one-time token it wrote to
    ``settings.bootstrap_token_file`` (``bootstrap_token`` holds it).
    """

    def __init__(
        self, settings: ControlSettings, clock: Clock = utc_now, *, bootstrap_as: tuple[str, str] | None = None
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._bootstrap_as = bootstrap_as
        self._stack = AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._gate = BootstrapGate.closed()
        self.port = 0
        self.bootstrapped: accounts.Bootstrapped | None = None

    @property
    def bootstrap_token(self) -> str | None:
        """The one-time BootstrapAdmin token while no admin exists (also in the token file, if one is set)."""
        return self._gate.token

    async def _bootstrap(self) -> None:
        if self._bootstrap_as is not None:
            email, display_name = self._bootstrap_as
            try:
                self.bootstrapped = await accounts.bootstrap_admin(email, display_name, peer_is_local=True)
            except AlreadyExists:
                self.bootstrapped = None
        if not await InstanceValue.exists(name=ADMIN_BOOTSTRAPPED):
            self._gate = BootstrapGate.open(self._settings.bootstrap_token_file)
        else:
            self._gate = BootstrapGate.closed(self._settings.bootstrap_token_file)

    async def __aenter__(self) -> ControlServer:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(open_database(self._settings.database_url))
            codec = PageTokenCodec(await load_or_create_secret(PAGE_TOKEN_KEY))
            await self._stack.enter_async_context(
                ReservationSweeper(
                    timeout=timedelta(seconds=self._settings.reservation_timeout),
                    interval=self._settings.sweep_interval,
                    clock=self._clock,
                )
            )
            await self._bootstrap()
            pool = PasswordPool(self._settings.password_workers)
            self._stack.callback(pool.close)  # after the server stopped: no call hashes any more
            logins = LoginPolicy(
                pool, throttles(self._settings, self._clock), timedelta(seconds=self._settings.session_ttl)
            )
            server, health_servicer = build_server(self._settings, codec, self._clock, logins, self._gate)
            try:
                self.port = self._add_port(server)
            except RuntimeError:
                self.port = 0
            if self.port == 0:
                raise OSError(f"cannot listen on {self._settings.grpc_address} (address in use or invalid)")
            await server.start()
            self._server = server
            self._stack.push_async_callback(server.stop, STOP_GRACE_SECONDS)
            self._stack.push_async_callback(health_servicer.enter_graceful_shutdown)
            for name in SERVICE_NAMES:
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self._stack.aclose()
            raise
        _log.info("control plane listening on port %d (%s, %s)", self.port, self._settings.grpc_address, self.security)
        return self

    @property
    def security(self) -> str:
        """``plain text``, ``TLS`` or ``mutual TLS``: how the gRPC port is served."""
        if not self._settings.tls_cert:
            return "plain text"
        return "mutual TLS" if self._settings.tls_client_ca else "TLS"

    def _add_port(self, server: grpc.aio.Server) -> int:
        settings = self._settings
        if not settings.tls_cert:
            return server.add_insecure_port(settings.grpc_address)
        credentials = tls.server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)
        return server.add_secure_port(settings.grpc_address, credentials)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


__all__ = ["ControlServer", "build_server"]
