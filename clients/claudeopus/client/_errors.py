"""Typed errors raised by the client.

Hierarchy::

    ClaudeOpusError              any failed call; .code, .reason, .message, .field_violations
    ├── InvalidArgumentError     INVALID_ARGUMENT (see .field_violations)
    ├── UnauthenticatedError     UNAUTHENTICATED (missing, unknown, revoked or expired key)
    ├── PermissionDeniedError    PERMISSION_DENIED
    ├── NotFoundError            NOT_FOUND (also: outside your subtree)
    ├── AlreadyExistsError       ALREADY_EXISTS
    ├── FailedPreconditionError  FAILED_PRECONDITION
    ├── ResourceExhaustedError   RESOURCE_EXHAUSTED (.retry_after: seconds to wait, for RATE_LIMITED)
    └── UnavailableError         UNAVAILABLE / DEADLINE_EXCEEDED (the server could not be reached)

``reason`` is the ``google.rpc.ErrorInfo.reason`` (a ``claudeopus.v1.ErrorReason``
name such as ``KEY_REVOKED``), or ``""`` when the server sent none.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ClaudeOpusError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field_violations: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason + ': ' if reason else ''}{message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations = field_violations or {}
        # ErrorInfo.metadata, e.g. which budget ran out for BUDGET_EXHAUSTED.
        self.metadata = metadata or {}


class InvalidArgumentError(ClaudeOpusError):
    pass


class UnauthenticatedError(ClaudeOpusError):
    pass


class PermissionDeniedError(ClaudeOpusError):
    pass


class NotFoundError(ClaudeOpusError):
    pass


class AlreadyExistsError(ClaudeOpusError):
    pass


class FailedPreconditionError(ClaudeOpusError):
    pass


class ResourceExhaustedError(ClaudeOpusError):
    # google.rpc.RetryInfo's delay in seconds when the server sent one (RATE_LIMITED), else None.
    retry_after: float | None = None


class UnavailableError(ClaudeOpusError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[ClaudeOpusError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> ClaudeOpusError:
    """Turn a failed call into the matching typed error, reading ErrorInfo and BadRequest."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    details = status.details if status is not None else ()
    return _typed(error.code(), error.details() or "", details)


def from_status(status: status_pb2.Status) -> ClaudeOpusError | None:
    """A ``google.rpc.Status`` reported inside a reply (a batch entry's): None when OK, else its typed error."""
    if status.code == code_pb2.OK:
        return None
    return _typed(_CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN), status.message, status.details)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _typed(code: grpc.StatusCode, message: str, details: Iterable[any_pb2.Any]) -> ClaudeOpusError:
    reason = ""
    metadata: dict[str, str] = {}
    violations: dict[str, str] = {}
    retry_after: float | None = None
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Unpack(bad):
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    typed = error_of(code, message, reason, violations, metadata)
    if isinstance(typed, ResourceExhaustedError):
        typed.retry_after = retry_after
    return typed


def error_of(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    field_violations: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> ClaudeOpusError:
    """The typed error for ``code`` (for errors reported inside a reply, such as a batch's results)."""
    cls = _BY_CODE.get(code, ClaudeOpusError)
    return cls(code, message, reason, field_violations, metadata)
