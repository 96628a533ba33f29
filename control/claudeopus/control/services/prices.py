"""PriceService: price tables per account and the price in force."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from claudeopus.control.domain import accounts, price_changes, prices
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, PRICES, parse_id, parse_optional_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.control.services.masks import update_paths
from claudeopus.v1 import prices_pb2, prices_pb2_grpc

Ctx = grpc.aio.ServicerContext


class PriceServicer(prices_pb2_grpc.PriceServiceServicer):
    def __init__(self, codec: PageTokenCodec, clock: Clock) -> None:
        self._codec = codec
        self._clock = clock

    @rpc
    async def CreatePrice(
        self, request: prices_pb2.CreatePriceRequest, context: Ctx[object, object]
    ) -> prices_pb2.Price:
        now = self._clock()
        principal = await management_principal(context, now)
        row = await price_changes.create_price(
            principal,
            parent_id=parse_optional_id("parent", ACCOUNTS, request.parent),
            model=request.price.model,
            input_micros=request.price.input_micros_per_million,
            output_micros=request.price.output_micros_per_million,
            request_id=request.request_id,
            now=now,
        )
        return convert.price(prices.seen_by(principal, row))

    @rpc
    async def GetPrice(self, request: prices_pb2.GetPriceRequest, context: Ctx[object, object]) -> prices_pb2.Price:
        principal = await management_principal(context, self._clock())
        return convert.price(await prices.get_price(principal, parse_id("name", PRICES, request.name)))

    @rpc
    async def ListPrices(
        self, request: prices_pb2.ListPricesRequest, context: Ctx[object, object]
    ) -> prices_pb2.ListPricesResponse:
        principal = await management_principal(context, self._clock())
        account = await accounts.account_in_subtree(
            principal, parse_optional_id("parent", ACCOUNTS, request.parent), "parent"
        )
        page = await prices.list_prices(
            principal, self._codec, account=account, size=request.page_size, token=request.page_token
        )
        return prices_pb2.ListPricesResponse(
            prices=[convert.price(row) for row in page.prices], next_page_token=page.next_page_token
        )

    @rpc
    async def UpdatePrice(
        self, request: prices_pb2.UpdatePriceRequest, context: Ctx[object, object]
    ) -> prices_pb2.Price:
        now = self._clock()
        principal = await management_principal(context, now)
        row = await price_changes.update_price(
            principal,
            parse_id("price.name", PRICES, request.price.name),
            paths=update_paths(request.update_mask, request.price, price_changes.UPDATABLE_FIELDS),
            input_micros=request.price.input_micros_per_million,
            output_micros=request.price.output_micros_per_million,
            now=now,
        )
        return convert.price(prices.seen_by(principal, row))

    @rpc
    async def DeletePrice(
        self, request: prices_pb2.DeletePriceRequest, context: Ctx[object, object]
    ) -> empty_pb2.Empty:
        now = self._clock()
        principal = await management_principal(context, now)
        await price_changes.delete_price(principal, parse_id("name", PRICES, request.name), now)
        return empty_pb2.Empty()

    @rpc
    async def ResolvePrice(
        self, request: prices_pb2.ResolvePriceRequest, context: Ctx[object, object]
    ) -> prices_pb2.ResolvePriceResponse:
        principal = await management_principal(context, self._clock())
        resolved = await prices.resolve(
            principal, account_id=parse_optional_id("account", ACCOUNTS, request.account), model=request.model
        )
        inherited = resolved.inherited
        return prices_pb2.ResolvePriceResponse(
            priced=resolved.in_force.priced,
            input_micros_per_million=resolved.in_force.input_micros_per_million,
            output_micros_per_million=resolved.in_force.output_micros_per_million,
            sources=[convert.price(view) for view in resolved.sources],
            inherited=prices_pb2.InheritedPrice(
                input_micros_per_million=inherited.input_micros_per_million,
                output_micros_per_million=inherited.output_micros_per_million,
            )
            if inherited is not None
            else None,
        )
