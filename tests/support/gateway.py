"""One request through GatewayService's batch calls, answered as a unary call would answer it.

GatewayService authorizes and settles in batches only; a test of one request sends a batch of
one. A refused entry raises the :class:`grpc.aio.AioRpcError` the call would have failed with
(its code, message and rich status), so ``rpc_error`` / ``assert_error`` read it unchanged.

Example::

    authorized = await authorize_one(stub, gateway_pb2.AuthorizeRequest(...), metadata)
    settled = await settle_one(stub, gateway_pb2.SettleRequest(...), metadata)
    assert settled.usage_record.input_tokens == 15
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from claudeopus.control.models import UsageRecord
from claudeopus.control.services import convert
from claudeopus.v1 import gateway_pb2, gateway_pb2_grpc, usage_pb2

Metadata = tuple[tuple[str, str], ...]
# Where a failed call carries its rich google.rpc.Status (grpc_status reads it there).
DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Settled:
    """A settle of one request: its row as stored, and whether it was settled before."""

    usage_record: usage_pb2.UsageRecord
    already_settled: bool


async def authorize_one(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.AuthorizeRequest, metadata: Metadata
) -> gateway_pb2.AuthorizeResponse:
    """BatchAuthorize with ``request`` alone: its answer, or its refusal raised."""
    reply = await stub.BatchAuthorize(gateway_pb2.BatchAuthorizeRequest(requests=[request]), metadata=metadata)
    [result] = reply.results
    raise_refusal(result.status)
    return result.response


async def settle_one(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.SettleRequest, metadata: Metadata
) -> Settled:
    """BatchSettle with ``request`` alone: the request's row as stored (read in-process), or its refusal raised."""
    reply = await stub.BatchSettle(gateway_pb2.BatchSettleRequest(requests=[request]), metadata=metadata)
    [result] = reply.results
    raise_refusal(result.status)
    record = await UsageRecord.get(request_id=request.request_id)
    return Settled(convert.usage_record(record), result.already_settled)


def raise_refusal(status: status_pb2.Status) -> None:
    """Raise the error a unary call refused with ``status`` would have raised; nothing when it is OK."""
    if status.code == grpc.StatusCode.OK.value[0]:
        return
    code = next(code for code in grpc.StatusCode if code.value[0] == status.code)
    trailing = grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString()))
    raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=status.message)


def reason_of(status: status_pb2.Status) -> str:
    """The ErrorInfo reason a batch entry's status carries ("" when none)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def metadata_of(status: status_pb2.Status) -> dict[str, str]:
    """The ErrorInfo metadata a batch entry's status carries."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    return {}


def field_violations_of(status: status_pb2.Status) -> dict[str, str]:
    """The BadRequest field violations a batch entry's status carries, field to description."""
    violations: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations.update({v.field: v.description for v in bad.field_violations})
    return violations
