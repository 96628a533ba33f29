"""Prices for tests: only a model with a price in force is served, so test worlds price theirs.

Example::

    boot = await accounts.bootstrap_admin(...)
    await serve_free(boot.account.id)                       # the usual test models, at zero
    await set_price(admin, "m-1", 1_500_000, 2_000_000)     # a real price on the admin's account
"""

from __future__ import annotations

from datetime import datetime

import grpc

from claudeopus.client import ClaudeOpusClient
from claudeopus.control.domain import price_changes
from claudeopus.control.domain.clock import utc_now
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Price
from claudeopus.v1 import prices_pb2, prices_pb2_grpc
from tests.support import admin

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
        return await price_changes.create_price(
            principal,
            parent_id=None,
            model=model,
            input_micros=input_micros,
            output_micros=output_micros,
            request_id="",
            now=now,
        )
    return await price_changes.update_price(
        principal,
        existing.id,
        paths=price_changes.UPDATABLE_FIELDS,
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


_FAKE_UPSTREAM_MODELS = (
    "fake-1",
    "fake-2",
    "fake-slow",
    "fake-greedy",
    "fake-capped",
    "fake-hold",
    "fake-malformed",
    "fake-pause-first",
    "fake-pause-usage",
    "fake-pause-done",
    *(
        f"fault-{fault}"
        for fault in (
            "ok",
            "hang",
            "reset",
            "close",
            "stall",
            "reset-mid",
            "truncated",
            "early",
            "endless",
            "malformed",
            "slow",
            "status-429",
            "status-503",
        )
    ),
    "other",
    *(f"fake-status-{status}" for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503)),
    "fake-status-429-quota",
)
# The models the end-to-end tests call on the fake upstreams (tests/support/fake_upstream.py and
# fault_upstream.py), each also in its ``-echo-all`` form.
FAKE_MODELS = _FAKE_UPSTREAM_MODELS + tuple(f"{model}-echo-all" for model in _FAKE_UPSTREAM_MODELS)


def serve_fake_models(target: str, admin_key: str, models: tuple[str, ...] = FAKE_MODELS) -> None:
    """Price the fake upstreams' models at zero on the admin's account of a running control, so they are served."""

    async def create(client: ClaudeOpusClient) -> None:
        for model in models:
            await client.create_price(model=model, input_micros=0, output_micros=0)

    admin.call(target, admin_key, create)
