"""Calling a control plane's gRPC services in tests, and checking its errors on the wire.

An error is checked as AIP-193 asks: the status code, exactly one ``google.rpc.ErrorInfo``
of domain ``claudeopus`` carrying the reason, and for INVALID_ARGUMENT the
``google.rpc.BadRequest`` field violations.

Example::

    error = await rpc_error(stub.GetBudget(request, metadata=bearer(secret)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "name")
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Call metadata carrying ``token`` (a key secret or the service token) as the credential."""
    return (("authorization", f"Bearer {token}"),)


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    """``value`` as a protobuf Timestamp."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def resource_id(name: str) -> int:
    """The numeric id at the end of a resource name: ``accounts/12`` → 12."""
    return int(name.rpartition("/")[2])


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """Await ``call``; it must fail. Returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the status carries no details"
    assert status.code == error.code().value[0]
    return status


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The single ErrorInfo of a failed call; its domain must be ``claudeopus``."""
    status = _status(error)
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    assert infos[0].domain == "claudeopus"
    return infos[0]


def _violations(error: grpc.aio.AioRpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    violations = []
    for detail in _status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations.extend(bad.field_violations)
    return violations


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Field → description of every BadRequest violation of a failed call, in the order sent."""
    return {v.field: v.description for v in _violations(error)}


def assert_error(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str, *fields: str) -> None:
    """``error`` has ``code``, one ErrorInfo with ``reason`` and, if given, exactly the violated ``fields``
    in the order sent. Without ``fields``, an error other than INVALID_ARGUMENT must name no field.
    """
    assert error.code() == code, error
    assert error_info(error).reason == reason, _status(error)
    violated = [v.field for v in _violations(error)]
    if fields or code != grpc.StatusCode.INVALID_ARGUMENT:
        assert violated == list(fields), _status(error)
