"""Prices for tests: only a model with a price in force is served, so test worlds price theirs.

Example::

    boot = await accounts.bootstrap_admin(...)
    await serve_free(boot.account.id)                       # the usual test models, at zero
    await set_price(admin, "m-1", 1_500_000, 2_000_000)     # a real price on the admin's account
"""

from __future__ import annotations

from datetime import datetime

import grpc

from claudeopus.control.domain import prices
from claudeopus.control.domain.clock import utc_now
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Price
from claudeopus.v1 import prices_pb2, prices_pb2_grpc

# The models the control tests call; each is free on the root unless a test prices it.
FREE_MODELS = (
    "m",
    "m-1",
    "m-2",
    "m-9",
    "m-a",
    "m-b",
    "m-c",
    "m-big",
    "m-free",
    "m-one",
    "m-100",
    "gpt-x",
    "gpt-y",
    "slow",
    "anything",
)


async def serve_free(account_id: int, models: tuple[str, ...] = FREE_MODELS) -> None:
    """Price ``models`` at zero on the account (a test world's root), so they are served."""
    await Price.bulk_create(
        [
            Price(account_id=account_id, model=model, input_micros_per_million=0, output_micros_per_million=0)
            for model in models
        ]
    )


async def set_price(
    principal: Principal, model: str, input_micros: int, output_micros: int, *, now: datetime | None = None
) -> Price:
    """Price ``model`` on the caller's own account through the domain: the free row
    :func:`serve_free` put there changes, or a new one is created."""
    existing = await Price.get_or_none(account_id=principal.account_id, model=model)
    if existing is None:
        return await prices.create_price(
            principal,
            parent_id=None,
            model=model,
            input_micros=input_micros,
            output_micros=output_micros,
            request_id="",
            now=now,
        )
    return await prices.update_price(
        principal,
        existing.id,
        paths=prices.UPDATABLE_FIELDS,
        input_micros=input_micros,
        output_micros=output_micros,
        now=now or utc_now(),
    )


async def serve_free_over(channel: grpc.aio.Channel, secret: str, models: tuple[str, ...] = FREE_MODELS) -> None:
    """:func:`serve_free` through a running control's PriceService, as the caller of ``secret`` (on its account)."""
    stub = prices_pb2_grpc.PriceServiceStub(channel)
    metadata = (("authorization", f"Bearer {secret}"),)
    for model in models:
        await stub.CreatePrice(prices_pb2.CreatePriceRequest(price=prices_pb2.Price(model=model)), metadata=metadata)
