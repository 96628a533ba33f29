"""UsageService: list and summarize the usage of the caller's subtree."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from claudeopus.control.domain import accounts, usage, validation
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, parse_optional_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.models import Account
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.v1 import usage_pb2, usage_pb2_grpc

Ctx = grpc.aio.ServicerContext


def _time(field: str, present: bool, value: timestamp_pb2.Timestamp) -> datetime | None:
    return validation.timestamp(field, value.seconds, value.nanos) if present else None


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, codec: PageTokenCodec, clock: Clock) -> None:
        self._codec = codec
        self._clock = clock

    @rpc
    async def ListUsageRecords(
        self, request: usage_pb2.ListUsageRecordsRequest, context: Ctx[object, object]
    ) -> usage_pb2.ListUsageRecordsResponse:
        principal = await management_principal(context, self._clock())
        parent = await accounts.account_in_subtree(
            principal, parse_optional_id("parent", ACCOUNTS, request.parent), "parent"
        )
        account_id = parse_optional_id("account", ACCOUNTS, request.account)
        account: Account | None = None
        if account_id is not None:
            account = await accounts.account_in_subtree(principal, account_id, "account")
        page = await usage.list_usage_records(
            principal,
            self._codec,
            parent=parent,
            api_key_id=parse_optional_id("api_key", API_KEYS, request.api_key),
            size=request.page_size,
            token=request.page_token,
            account=account,
            model=request.model,
            start_time=_time("start_time", request.HasField("start_time"), request.start_time),
            end_time=_time("end_time", request.HasField("end_time"), request.end_time),
        )
        return usage_pb2.ListUsageRecordsResponse(
            usage_records=[convert.usage_record(r) for r in page.records], next_page_token=page.next_page_token
        )

    @rpc
    async def SummarizeUsage(
        self, request: usage_pb2.SummarizeUsageRequest, context: Ctx[object, object]
    ) -> usage_pb2.SummarizeUsageResponse:
        now = self._clock()
        principal = await management_principal(context, now)
        parent = await accounts.account_in_subtree(
            principal, parse_optional_id("parent", ACCOUNTS, request.parent), "parent"
        )
        rows = await usage.summarize_usage(
            parent=parent,
            group_by=list(request.group_by),
            interval=request.interval,
            start_time=_time("start_time", request.HasField("start_time"), request.start_time),
            end_time=_time("end_time", request.HasField("end_time"), request.end_time),
            api_key_id=parse_optional_id("api_key", API_KEYS, request.api_key),
            model=request.model,
            now=now,
        )
        return usage_pb2.SummarizeUsageResponse(summaries=[convert.usage_summary(r) for r in rows])
