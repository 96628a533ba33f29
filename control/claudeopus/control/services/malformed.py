"""Requests whose bytes are not a valid protobuf message get INVALID_ARGUMENT, not UNKNOWN.

grpc-python deserializes before any servicer code runs and answers a decode
failure with UNKNOWN. This interceptor swaps in a deserializer that marks such
requests, and a guard that refuses them in the caller's language.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from claudeopus.control.domain.errors import InvalidArgument
from claudeopus.control.services.errors import to_status
from claudeopus.control.services.handlers import unary_behavior

_MALFORMED = object()  # sentinel: never mutated


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        behavior = None if handler is None else unary_behavior(handler)
        if handler is None or behavior is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError:
                return _MALFORMED

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is _MALFORMED:
                error = InvalidArgument.field("request", "is not a valid protobuf message for this method")
                await context.abort_with_status(to_status(error))
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=tolerant, response_serializer=handler.response_serializer
        )
