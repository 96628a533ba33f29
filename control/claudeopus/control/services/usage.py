"""UsageService: list usage records of the caller's subtree."""

from __future__ import annotations

import grpc

from claudeopus.control.domain import accounts, usage
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, parse_optional_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.v1 import usage_pb2, usage_pb2_grpc

Ctx = grpc.aio.ServicerContext


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
        page = await usage.list_usage_records(
            principal,
            self._codec,
            parent=parent,
            api_key_id=parse_optional_id("api_key", API_KEYS, request.api_key),
            size=request.page_size,
            token=request.page_token,
        )
        return usage_pb2.ListUsageRecordsResponse(
            usage_records=[convert.usage_record(r) for r in page.records], next_page_token=page.next_page_token
        )
