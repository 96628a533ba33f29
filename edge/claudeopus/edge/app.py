"""``build_app(settings)``: the edge's BlackSheep application.

Example::

    app = build_app(EdgeSettings(upstream_url="http://127.0.0.1:9000/v1", service_token=token))
    # serve with any ASGI server, e.g. uvicorn.Server(uvicorn.Config(app, ...))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from blacksheep import Application, Request, Response
from blacksheep.server.routing import Router

from claudeopus import tls
from claudeopus.edge import errors
from claudeopus.edge.access_log import AccessLog, AccessLogMiddleware
from claudeopus.edge.forward import Forwarder
from claudeopus.edge.metering.grpc_control import GrpcControl
from claudeopus.edge.metering.meter import Metering
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.routes import ROUTES, error_response, register_routes
from claudeopus.edge.settings import EdgeSettings
from claudeopus.edge.upstream import AiohttpUpstream

_log = logging.getLogger(__name__)


class EdgeApplication(Application):
    """BlackSheep's Application with logging that never quotes a URL query, a header or an exception text."""

    def __init__(self, *, access_log: AccessLog | None = None, **options: Any) -> None:
        super().__init__(**options)
        inner = super().__call__
        logged = access_log is not None and access_log.enabled
        self._asgi = AccessLogMiddleware(inner, access_log, routes=ROUTES) if access_log and logged else inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)

    async def log_unhandled_exc(self, request: Request, exc: BaseException) -> None:
        _log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)

    async def log_handled_exc(self, request: Request, exc: BaseException) -> None:
        _log.debug("answered %s on %s %s", type(exc).__name__, request.method, request.path)


ControlFactory = Callable[[grpc.aio.Channel, EdgeSettings], ControlPort]


def control_client(channel: grpc.aio.Channel, settings: EdgeSettings) -> ControlPort:
    """The real control client: what every edge uses."""
    return GrpcControl(channel, settings.service_token, settings.control_timeout)


def control_channel(settings: EdgeSettings) -> grpc.aio.Channel:
    """The channel to control: TLS (mutual when the edge has a client certificate) or plain text."""
    credentials = tls.channel_credentials(
        settings.control_ca, settings.control_client_cert, settings.control_client_key
    )
    return tls.aio_channel(settings.control_target, credentials)


def build_app(
    settings: EdgeSettings,
    *,
    control_factory: ControlFactory = control_client,
) -> Application:
    """Assemble routes, error handlers, and the lifespan owning the upstream client and control channel.

    ``control_factory`` builds the control client from the channel and the settings. Only the
    benchmark passes another one (``bench/bare_edge.py``: a no-op stub, to measure the bare relay);
    no setting or flag switches authorization or usage off.
    """
    access_log = AccessLog.from_settings(settings)
    # A router of its own: BlackSheep's default one is shared by every app of the process.
    app = EdgeApplication(show_error_details=False, access_log=access_log, router=Router())
    app.lifespan(access_log.lifespan)  # type: ignore[no-untyped-call]

    async def resources(app: Application) -> AsyncIterator[None]:
        upstream = AiohttpUpstream(settings)
        async with contextlib.aclosing(upstream), control_channel(settings) as channel:
            metering = await Metering.start(
                control_factory(channel, settings),
                spool_dir=settings.spool_dir,
                spool_max_bytes=settings.spool_max_bytes,
                control_timeout=settings.control_timeout,
                lease_seconds=settings.lease_seconds,
                settle_linger=settings.settle_linger,
            )
            forwarder = Forwarder(
                upstream=upstream,
                metering=metering,
                upstream_api_key=settings.upstream_api_key,
                output_cap_field=settings.upstream_max_tokens_field,
                connect_retries=settings.upstream_connect_retries,
                max_duration=settings.upstream_max_duration,
                max_choices=settings.max_choices,
                models_owned_by=settings.models_owned_by,
            )
            app.services.register(Forwarder, instance=forwarder)
            try:
                yield
            finally:
                await metering.aclose()

    app.lifespan(resources)  # type: ignore[no-untyped-call]

    async def openai_error(app: Any, request: Request, exc: errors.OpenAIError) -> Response:
        return error_response(exc)

    async def internal_error(app: Any, request: Request, exc: Exception) -> Response:
        return error_response(errors.OpenAIError("The gateway failed to handle this request.", code="internal_error"))

    app.exceptions_handlers[errors.OpenAIError] = openai_error
    app.exceptions_handlers[500] = internal_error
    register_routes(app, settings.max_body_bytes, settings.max_choices)
    return app
