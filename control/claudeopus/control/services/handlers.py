"""The unary behaviour of a method handler, typed as what grpc.aio calls.

grpc's stubs describe ``RpcMethodHandler.unary_unary`` as the synchronous server calls it
(a ``grpc.ServicerContext``, a plain result); under grpc.aio it is a coroutine function
taking a ``grpc.aio.ServicerContext``. Interceptors that wrap it read it through here.

Example::

    behavior = unary_behavior(handler)
    if behavior is not None:
        response = await behavior(request, context)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

AioUnary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def unary_behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> AioUnary | None:
    """The handler's unary-unary behaviour under grpc.aio; None for a streaming method."""
    return cast(AioUnary | None, handler.unary_unary)
