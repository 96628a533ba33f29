"""What every async client call shares: the stubs it calls, error translation and paging."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from claudeopus.client._errors import from_rpc_error
from claudeopus.v1 import (
    accounts_pb2_grpc,
    api_keys_pb2_grpc,
    budgets_pb2_grpc,
    prices_pb2_grpc,
    usage_pb2_grpc,
)

T = TypeVar("T")


class AsyncCalls:
    """The service stubs and the call wrapper of :class:`~claudeopus.client.AsyncClient`."""

    accounts: accounts_pb2_grpc.AccountServiceAsyncStub
    api_keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub
    usage: usage_pb2_grpc.UsageServiceAsyncStub
    prices: prices_pb2_grpc.PriceServiceAsyncStub
    budgets: budgets_pb2_grpc.BudgetServiceAsyncStub
    _timeout: float

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


async def pages(fetch: Callable[[str], Awaitable[tuple[Iterable[T], str]]]) -> AsyncIterator[T]:
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return
