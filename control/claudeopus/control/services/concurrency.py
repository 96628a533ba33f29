"""Bound the calls of each management method served at once, so a flood of one cannot starve the rest.

Every unary method of the management services may run at most ``per_method`` calls at a
time (``Login``, whose argon2 work queues on a small pool, fewer); a call beyond the bound
is refused at once with RESOURCE_EXHAUSTED (reason RATE_LIMITED, with RetryInfo) instead of
waiting for a database connection or a hashing thread that the gateway service needs too.
The gateway service (the edge's hot path), health and reflection are never limited.

Example::

    server = grpc.aio.server(interceptors=[ConcurrencyLimit(32, {"/claudeopus.v1.AccountService/Login": 4},
                                                            exempt=("/claudeopus.v1.GatewayService/",))])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from claudeopus.control.domain.errors import Throttled
from claudeopus.control.services.errors import to_status
from claudeopus.control.services.handlers import unary_behavior

RETRY_AFTER_SECONDS = 0.5


class ConcurrencyLimit(grpc.aio.ServerInterceptor):
    def __init__(self, per_method: int, overrides: Mapping[str, int], *, exempt: tuple[str, ...]) -> None:
        self._default = per_method
        self._overrides = dict(overrides)
        self._exempt = exempt
        self._running: dict[str, int] = {}  # method -> calls in progress (one event loop: no lock needed)
        # Built once: a flood is refused at the cost of the call itself, nothing more.
        self._busy = to_status(Throttled("Too many calls of this method at once; retry shortly.", RETRY_AFTER_SECONDS))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        behavior = None if handler is None else unary_behavior(handler)
        if handler is None or behavior is None or method.startswith(self._exempt):
            return handler
        limit = self._overrides.get(method, self._default)

        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            running = self._running.get(method, 0)
            if running >= limit:
                await context.abort_with_status(self._busy)
            self._running[method] = running + 1
            try:
                return await behavior(request, context)
            finally:
                left = self._running[method] - 1
                if left:
                    self._running[method] = left
                else:
                    del self._running[method]

        return grpc.unary_unary_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


__all__ = ["ConcurrencyLimit"]
