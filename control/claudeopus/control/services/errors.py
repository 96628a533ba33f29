"""The one place where domain errors become gRPC statuses (AIP-193).

Each error carries ``google.rpc.ErrorInfo`` (domain ``claudeopus``, reason from
``claudeopus.v1.ErrorReason``) and, for bad input, ``google.rpc.BadRequest``.
Anything unexpected becomes INTERNAL with a fixed message: exception text never
reaches the caller.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from claudeopus.control.domain import errors

ERROR_DOMAIN = "claudeopus"
_log = logging.getLogger(__name__)

_CODES: dict[type[errors.DomainError], int] = {
    errors.InvalidArgument: code_pb2.INVALID_ARGUMENT,
    errors.Unauthenticated: code_pb2.UNAUTHENTICATED,
    errors.PermissionDenied: code_pb2.PERMISSION_DENIED,
    errors.NotFound: code_pb2.NOT_FOUND,
    errors.AlreadyExists: code_pb2.ALREADY_EXISTS,
    errors.FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    errors.ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_code(error: errors.DomainError) -> int:
    """The ``google.rpc.Code`` of ``error`` (of its nearest class that has one)."""
    found = (_CODES.get(cls) for cls in type(error).__mro__)
    return next((code for code in found if code is not None), code_pb2.FAILED_PRECONDITION)


def to_status(error: errors.DomainError) -> grpc.Status:
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.metadata))
    ]
    if isinstance(error, errors.InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(error, errors.Throttled):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1, round(error.retry_after * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=status_code(error), message=error.message, details=details))


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
C = TypeVar("C", bound=grpc.aio.ServicerContext[Any, Any])


def rpc(method: Callable[[S, Req, C], Awaitable[Resp]]) -> Callable[[S, Req, C], Awaitable[Resp]]:
    """Wrap a servicer method: domain errors become statuses, the unexpected becomes INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: C) -> Resp:
        try:
            return await method(self, request, context)
        except errors.DomainError as error:
            await context.abort_with_status(to_status(error))
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            # The type and the stack, never the exception's text: it may quote values.
            stack = "".join(traceback.format_tb(exc.__traceback__))
            _log.error("unexpected %s in %s\n%s", type(exc).__name__, method.__qualname__, stack)
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error; the request was not applied.")
            raise

    return wrapper


__all__ = ["rpc", "to_status"]
