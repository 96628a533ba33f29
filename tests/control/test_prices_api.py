"""PriceService end to end, and what prices make a request cost.

Served in-process by the real ``ControlServer``, driven with the generated stubs
and management keys. Errors are checked on the wire: status code and
``google.rpc.ErrorInfo`` reason (plus the ``google.rpc.BadRequest`` fields for
INVALID_ARGUMENT). Costs are checked through GatewayService.Authorize/Settle and
read back from UsageService.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from tortoise.context import TortoiseContext
from tortoise.migrations.api import migrate

from claudeopus import keys
from claudeopus.control.db import open_database, tortoise_config
from claudeopus.control.models import Price, UsageRecord
from claudeopus.control.server import ControlServer
from claudeopus.control.settings import ControlSettings
from claudeopus.costs import cost_micros
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    error_reason_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    prices_pb2,
    prices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.support.clock import FakeClock
from tests.support.control_server import in_process_control
from tests.support.rpc import assert_error, bearer, rpc_error, stamp

T0 = datetime(2030, 1, 10, 12, tzinfo=UTC)
INPUT = "input_micros_per_million"
OUTPUT = "output_micros_per_million"


# -- harness -------------------------------------------------------------------


@dataclass
class Manager:
    """An account with a management key."""

    account: accounts_pb2.Account
    secret: str

    @property
    def name(self) -> str:
        return self.account.name


@dataclass
class Control:
    clock: FakeClock
    service_token: str
    admin: Manager
    accounts: accounts_pb2_grpc.AccountServiceAsyncStub
    keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub
    prices: prices_pb2_grpc.PriceServiceAsyncStub
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub
    usage: usage_pb2_grpc.UsageServiceAsyncStub

    async def new_account(
        self, caller: Manager, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_USER, parent: str = ""
    ) -> accounts_pb2.Account:
        spec = accounts_pb2.Account(email=f"a-{secrets.token_hex(6)}@example.com", role=role)
        request = accounts_pb2.CreateAccountRequest(parent=parent, account=spec)
        return await self.accounts.CreateAccount(request, metadata=bearer(caller.secret))

    async def new_key(self, caller: Manager, parent: str, scope: api_keys_pb2.Scope.ValueType) -> str:
        request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=api_keys_pb2.ApiKey(scopes=[scope]))
        return (await self.keys.CreateApiKey(request, metadata=bearer(caller.secret))).secret

    async def new_manager(
        self, caller: Manager, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_RESELLER, parent: str = ""
    ) -> Manager:
        account = await self.new_account(caller, role, parent)
        return Manager(account, await self.new_key(caller, account.name, api_keys_pb2.SCOPE_MANAGEMENT))

    async def create(
        self,
        caller: Manager,
        model: str,
        input_micros: int,
        output_micros: int,
        *,
        parent: str = "",
        request_id: str = "",
    ) -> prices_pb2.Price:
        spec = prices_pb2.Price(
            model=model, input_micros_per_million=input_micros, output_micros_per_million=output_micros
        )
        request = prices_pb2.CreatePriceRequest(parent=parent, price=spec, request_id=request_id)
        return await self.prices.CreatePrice(request, metadata=bearer(caller.secret))

    async def get(self, caller: Manager, name: str) -> prices_pb2.Price:
        return await self.prices.GetPrice(prices_pb2.GetPriceRequest(name=name), metadata=bearer(caller.secret))

    async def list(self, caller: Manager, **fields: object) -> prices_pb2.ListPricesResponse:
        request = prices_pb2.ListPricesRequest(**fields)  # type: ignore[arg-type]
        return await self.prices.ListPrices(request, metadata=bearer(caller.secret))

    async def update(
        self, caller: Manager, name: str, input_micros: int, output_micros: int, *paths: str
    ) -> prices_pb2.Price:
        spec = prices_pb2.Price(
            name=name, input_micros_per_million=input_micros, output_micros_per_million=output_micros
        )
        request = prices_pb2.UpdatePriceRequest(price=spec, update_mask=field_mask_pb2.FieldMask(paths=paths))
        return await self.prices.UpdatePrice(request, metadata=bearer(caller.secret))

    async def delete(self, caller: Manager, name: str) -> None:
        await self.prices.DeletePrice(prices_pb2.DeletePriceRequest(name=name), metadata=bearer(caller.secret))

    async def resolve(self, caller: Manager, model: str, account: str = "") -> prices_pb2.ResolvePriceResponse:
        request = prices_pb2.ResolvePriceRequest(account=account, model=model)
        return await self.prices.ResolvePrice(request, metadata=bearer(caller.secret))

    async def complete(
        self, secret: str, model: str, input_tokens: int, output_tokens: int
    ) -> gateway_pb2.SettleResponse:
        """Authorize and settle one request of the key ``secret``."""
        service = bearer(self.service_token)
        request_id = str(uuid.uuid4())
        authorize = gateway_pb2.AuthorizeRequest(
            request_id=request_id, key_hash=keys.hash_secret_bytes(secret), model=model, max_output_tokens=100
        )
        await self.gateway.Authorize(authorize, metadata=service)
        settle = gateway_pb2.SettleRequest(
            request_id=request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency=duration_pb2.Duration(nanos=5_000_000),
            status=usage_pb2.USAGE_STATUS_SUCCEEDED,
            source=usage_pb2.USAGE_SOURCE_REPORTED,
            http_status=200,
        )
        return await self.gateway.Settle(settle, metadata=service)


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[Control]:
    clock = FakeClock(T0)
    async with in_process_control(database_url, clock=clock, free_models=()) as running:
        yield Control(
            clock=clock,
            service_token=running.service_token,
            admin=Manager(running.admin, running.admin_secret),
            accounts=running.accounts,
            keys=running.api_keys,
            prices=running.prices,
            gateway=running.gateway,
            usage=running.usage,
        )


def amounts(message: prices_pb2.Price | prices_pb2.ResolvePriceResponse) -> tuple[int, int]:
    return message.input_micros_per_million, message.output_micros_per_million


def inherited(resolved: prices_pb2.ResolvePriceResponse) -> tuple[int, int] | None:
    """The figure set above the caller, or None when nothing is."""
    if not resolved.HasField("inherited"):
        return None
    return resolved.inherited.input_micros_per_million, resolved.inherited.output_micros_per_million


def expected_cost(input_tokens: int, output_tokens: int, input_price: int, output_price: int) -> int:
    """ceil((in * ip + out * op) / 1e6), written independently of the implementation."""
    total = input_tokens * input_price + output_tokens * output_price
    whole, rest = divmod(total, 1_000_000)
    return whole + (1 if rest else 0)


# -- cost arithmetic -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "prices", "cost"),
    [
        ((0, 0), (100, 200), 0),
        ((1, 0), (1, 0), 1),  # a millionth of a micro rounds up to one micro
        ((1_000_000, 0), (7, 0), 7),
        ((1_000_000, 1_000_000), (7, 3), 10),
        ((1_000_001, 0), (7, 0), 8),
        ((1234, 567), (1_500_000, 2_500_003), 3269),
        ((10**15, 10**15), (10**12, 10**12), 2 * 10**21),  # beyond float precision, still exact
        ((10**15 + 1, 0), (10**12 - 1, 0), expected_cost(10**15 + 1, 0, 10**12 - 1, 0)),
    ],
)
def test_cost_is_rounded_up_in_exact_integers(tokens: tuple[int, int], prices: tuple[int, int], cost: int) -> None:
    assert cost_micros(*tokens, *prices) == cost == expected_cost(*tokens, *prices)


# -- happy paths ---------------------------------------------------------------


async def test_create_get_update_delete_a_price(control: Control) -> None:
    admin = control.admin
    created = await control.create(admin, "gpt-x", 100, 200)
    assert created.name.startswith("prices/")
    assert (created.account, created.model, amounts(created)) == (admin.name, "gpt-x", (100, 200))
    assert created.HasField("create_time") and created.HasField("update_time")
    assert await control.get(admin, created.name) == created

    control.clock.now = T0 + timedelta(hours=1)
    changed = await control.update(admin, created.name, 120, 999, INPUT)
    assert amounts(changed) == (120, 200)
    assert changed.update_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=1)
    assert changed.create_time == created.create_time
    assert amounts(await control.update(admin, created.name, 130, 230)) == (130, 230)  # empty mask: both
    assert amounts(await control.update(admin, created.name, 0, 240, OUTPUT)) == (130, 240)
    assert amounts(await control.update(admin, created.name, 1, 2, "*")) == (1, 2)
    assert amounts(await control.get(admin, created.name)) == (1, 2)

    await control.delete(admin, created.name)
    assert_error(await rpc_error(control.get(admin, created.name)), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert_error(await rpc_error(control.delete(admin, created.name)), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert (await control.list(admin)).prices == []
    # The model is free again on that account.
    assert amounts(await control.create(admin, "gpt-x", 5, 6)) == (5, 6)


async def test_zero_and_the_maximum_are_valid_amounts(control: Control) -> None:
    assert amounts(await control.create(control.admin, "free", 0, 0)) == (0, 0)
    assert amounts(await control.create(control.admin, "dear", 10**12, 10**12)) == (10**12, 10**12)


async def test_list_prices_by_model_in_pages(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    for model in ("m-c", "m-a", "m-e", "m-b", "m-d"):
        await control.create(admin, model, 10, 20)
    await control.create(admin, "m-a", 30, 40, parent=reseller.name)  # another account: not listed

    first = await control.list(admin, page_size=2)
    assert [p.model for p in first.prices] == ["m-a", "m-b"]
    assert all(p.account == admin.name for p in first.prices)
    second = await control.list(admin, page_size=2, page_token=first.next_page_token)
    assert [p.model for p in second.prices] == ["m-c", "m-d"]
    third = await control.list(admin, page_size=2, page_token=second.next_page_token)
    assert [p.model for p in third.prices] == ["m-e"]
    assert third.next_page_token == ""
    everything = await control.list(admin, parent=admin.name)
    assert [p.model for p in everything.prices] == ["m-a", "m-b", "m-c", "m-d", "m-e"]
    assert everything.next_page_token == ""

    mine = await control.list(reseller)
    assert [(p.account, p.model, amounts(p)) for p in mine.prices] == [(reseller.name, "m-a", (30, 40))]
    assert [p.model for p in (await control.list(admin, parent=reseller.name)).prices] == ["m-a"]


async def test_page_tokens_are_bound_to_the_caller_and_the_account(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    second_admin_key = Manager(admin.account, await control.new_key(admin, admin.name, api_keys_pb2.SCOPE_MANAGEMENT))
    for model in ("a", "b", "c"):
        await control.create(admin, model, 10, 20)
        await control.create(admin, model, 10, 20, parent=reseller.name)
    token = (await control.list(admin, page_size=1)).next_page_token
    assert token

    for call in (
        control.list(admin, parent=reseller.name, page_size=1, page_token=token),  # another account
        control.list(second_admin_key, page_size=1, page_token=token),  # another credential
        control.list(reseller, page_size=1, page_token=token),  # another caller altogether
        control.list(admin, page_size=1, page_token=token[:-2] + "AA"),  # edited
        control.list(admin, page_size=1, page_token="garbage"),
    ):
        assert_error(await rpc_error(call), grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")
    error = await rpc_error(control.list(admin, page_size=-1))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "page_size")


async def test_resolve_an_unpriced_model_and_the_callers_own_account(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    unpriced = await control.resolve(reseller, "nothing")
    assert (unpriced.priced, amounts(unpriced), list(unpriced.sources)) == (False, (0, 0), [])
    assert not unpriced.HasField("inherited")

    await control.create(admin, "gpt-x", 100, 200)
    resolved = await control.resolve(reseller, "gpt-x")  # empty account: the caller's own
    # The admin's price is set above the reseller: one inherited figure, not a source.
    assert (resolved.priced, amounts(resolved), list(resolved.sources)) == (True, (100, 200), [])
    assert inherited(resolved) == (100, 200)
    free = await control.create(admin, "free", 0, 0)
    resolved = await control.resolve(admin, "free", admin.name)
    assert (resolved.priced, amounts(resolved), list(resolved.sources)) == (True, (0, 0), [free])
    assert not resolved.HasField("inherited")


# -- the markup rule -----------------------------------------------------------


async def test_a_reseller_marks_up_and_the_highest_price_on_the_chain_is_in_force(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_account(reseller)
    base = await control.create(admin, "gpt-x", 100, 200)

    error = await rpc_error(control.create(reseller, "gpt-x", 90, 250))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")
    assert INPUT in (error.details() or "") and OUTPUT not in (error.details() or "")
    error = await rpc_error(control.create(reseller, "gpt-x", 150, 199))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")
    assert OUTPUT in (error.details() or "") and INPUT not in (error.details() or "")
    error = await rpc_error(control.create(reseller, "gpt-x", 99, 199))
    assert INPUT in (error.details() or "") and OUTPUT in (error.details() or "")
    assert (await control.list(reseller)).prices == []

    markup = await control.create(reseller, "gpt-x", 150, 250)
    assert (markup.account, amounts(markup)) == (reseller.name, (150, 250))
    # Equal to the parent's price in force is allowed.
    await control.create(admin, "gpt-y", 0, 0)
    assert amounts(await control.create(reseller, "gpt-y", 0, 0)) == (0, 0)

    # On its user: at least the reseller's own price (the price in force on the user's parent).
    error = await rpc_error(control.create(reseller, "gpt-x", 140, 300, parent=user.name))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")
    error = await rpc_error(control.create(reseller, "gpt-x", 110, 300, parent=user.name))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")  # above the admin's, below own
    on_user = await control.create(reseller, "gpt-x", 180, 300, parent=user.name)
    assert on_user.account == user.name

    resolved = await control.resolve(reseller, "gpt-x", user.name)
    assert (resolved.priced, amounts(resolved)) == (True, (180, 300))
    # What the reseller set (its account first); the admin's base is set above it: inherited.
    assert list(resolved.sources) == [markup, on_user]
    assert inherited(resolved) == amounts(base) == (100, 200)
    assert amounts(await control.resolve(reseller, "gpt-x")) == (150, 250)

    # Updates follow the same rule.
    error = await rpc_error(control.update(reseller, markup.name, 99, 250))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")
    error = await rpc_error(control.update(reseller, on_user.name, 149, 0, INPUT))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")
    assert amounts(await control.get(reseller, on_user.name)) == (180, 300)

    # The admin raises the base above the reseller's prices: the maximum is in force everywhere below.
    raised = await control.update(admin, base.name, 400, 260)
    resolved = await control.resolve(reseller, "gpt-x", user.name)
    assert amounts(resolved) == (400, 300)
    assert list(resolved.sources) == [markup, on_user]
    assert inherited(resolved) == amounts(raised) == (400, 260)
    assert amounts(await control.resolve(admin, "gpt-x", reseller.name)) == (400, 260)

    # A change of one component is checked on that component only.
    assert amounts(await control.update(reseller, markup.name, 0, 270, OUTPUT)) == (150, 270)
    error = await rpc_error(control.update(reseller, markup.name, 160, 0, INPUT))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")

    # Without its own price the user falls back to the chain.
    await control.delete(reseller, on_user.name)
    assert amounts(await control.resolve(reseller, "gpt-x", user.name)) == (400, 270)


async def test_a_price_on_the_root_has_no_floor(control: Control) -> None:
    reseller = await control.new_manager(control.admin)
    base = await control.create(control.admin, "gpt-x", 100, 100)
    await control.create(reseller, "gpt-x", 500, 500)
    # The root has no parent; prices below it do not constrain it.
    assert amounts(await control.update(control.admin, base.name, 1, 1, "*")) == (1, 1)
    assert amounts(await control.resolve(control.admin, "gpt-x", reseller.name)) == (500, 500)


async def test_only_the_admin_makes_a_model_available(control: Control) -> None:
    """A reseller's price for a model nothing above it prices would serve it at whatever price it chose."""
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_account(reseller)
    for parent in ("", user.name):
        error = await rpc_error(control.create(reseller, "gpt-new", 0, 0, parent=parent))
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_AVAILABLE")
    assert not (await control.resolve(admin, "gpt-new", user.name)).priced
    # Once the admin prices it (on the root or on the reseller), the reseller adds its markup.
    await control.create(admin, "gpt-new", 10, 10, parent=reseller.name)
    assert amounts(await control.create(reseller, "gpt-new", 12, 12, parent=user.name)) == (12, 12)


# -- errors --------------------------------------------------------------------


async def test_create_rejects_bad_input(control: Control) -> None:
    admin = control.admin
    invalid, failed = grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"
    assert_error(await rpc_error(control.create(admin, "", 1, 1)), invalid, failed, "price.model")
    assert_error(await rpc_error(control.create(admin, "x" * 201, 1, 1)), invalid, failed, "price.model")
    assert_error(await rpc_error(control.create(admin, "bad\nname", 1, 1)), invalid, failed, "price.model")
    assert_error(await rpc_error(control.create(admin, "m", -1, 1)), invalid, failed, f"price.{INPUT}")
    assert_error(await rpc_error(control.create(admin, "m", 1, 10**12 + 1)), invalid, failed, f"price.{OUTPUT}")
    error = await rpc_error(control.create(admin, "m", -5, -5))
    assert_error(error, invalid, failed, f"price.{INPUT}", f"price.{OUTPUT}")
    assert_error(await rpc_error(control.create(admin, "m", 1, 1, parent="users/1")), invalid, failed, "parent")
    error = await rpc_error(control.create(admin, "m", 1, 1, request_id="x" * 65))
    assert_error(error, invalid, failed, "request_id")
    missing = await rpc_error(control.create(admin, "m", 1, 1, parent="accounts/999999"))
    assert_error(missing, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert (await control.list(admin)).prices == []


async def test_one_price_per_model_and_account(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    await control.create(admin, "gpt-x", 1, 1)
    error = await rpc_error(control.create(admin, "gpt-x", 2, 2))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
    # The same model on another account is another price; model names are case-sensitive.
    await control.create(admin, "gpt-x", 2, 2, parent=reseller.name)
    await control.create(admin, "GPT-X", 2, 2)


async def test_request_id_makes_create_safe_to_retry(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    first = await control.create(admin, "gpt-x", 10, 20, request_id="r-1")
    again = await control.create(admin, "gpt-x", 10, 20, request_id="r-1")
    assert again == first
    assert len((await control.list(admin)).prices) == 1
    for args in (("gpt-x", 11, 20), ("gpt-x", 10, 21), ("gpt-y", 10, 20)):
        error = await rpc_error(control.create(admin, *args, request_id="r-1"))
        assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")
    # Request ids are per account.
    other = await control.create(admin, "gpt-x", 10, 20, parent=reseller.name, request_id="r-1")
    assert other.name != first.name


async def test_update_rejects_bad_input(control: Control) -> None:
    admin = control.admin
    price = await control.create(admin, "gpt-x", 10, 20)
    invalid, failed = grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"
    error = await rpc_error(control.update(admin, price.name, 1, 1, "model"))
    assert_error(error, invalid, failed, "update_mask")
    error = await rpc_error(control.update(admin, price.name, 1, 1, INPUT, "account"))
    assert_error(error, invalid, failed, "update_mask")
    error = await rpc_error(control.update(admin, price.name, -1, 1))
    assert_error(error, invalid, failed, f"price.{INPUT}")
    error = await rpc_error(control.update(admin, price.name, 1, 10**12 + 1, OUTPUT))
    assert_error(error, invalid, failed, f"price.{OUTPUT}")
    # An amount outside the mask is not looked at.
    assert amounts(await control.update(admin, price.name, 7, -1, INPUT)) == (7, 20)
    error = await rpc_error(control.update(admin, "accounts/1", 1, 1))
    assert_error(error, invalid, failed, "price.name")
    error = await rpc_error(control.update(admin, "prices/999999", 1, 1))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert amounts(await control.get(admin, price.name)) == (7, 20)


async def test_bad_names_and_models(control: Control) -> None:
    admin = control.admin
    invalid, failed = grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"
    assert_error(await rpc_error(control.get(admin, "prices/x")), invalid, failed, "name")
    assert_error(await rpc_error(control.get(admin, "")), invalid, failed, "name")
    assert_error(await rpc_error(control.delete(admin, "apiKeys/1")), invalid, failed, "name")
    assert_error(await rpc_error(control.list(admin, parent="prices/1")), invalid, failed, "parent")
    assert_error(await rpc_error(control.resolve(admin, "")), invalid, failed, "model")
    assert_error(await rpc_error(control.resolve(admin, "m", "accounts/")), invalid, failed, "account")
    for call in (control.get(admin, "prices/999999"), control.resolve(admin, "m", "accounts/999999")):
        assert_error(await rpc_error(call), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_price_calls_need_a_management_credential(control: Control) -> None:
    price = await control.create(control.admin, "gpt-x", 10, 20)
    request = prices_pb2.GetPriceRequest(name=price.name)
    error = await rpc_error(control.prices.GetPrice(request))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")
    inference = await control.new_key(control.admin, control.admin.name, api_keys_pb2.SCOPE_INFERENCE)
    error = await rpc_error(control.prices.GetPrice(request, metadata=bearer(inference)))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_SCOPE_DENIED")
    error = await rpc_error(control.prices.GetPrice(request, metadata=bearer(control.service_token)))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_INVALID")


async def test_a_user_reads_prices_but_cannot_set_them(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_manager(reseller, accounts_pb2.ROLE_USER)
    await control.create(admin, "gpt-x", 100, 200)
    markup = await control.create(reseller, "gpt-x", 150, 250, parent=user.name)

    assert amounts(await control.resolve(user, "gpt-x")) == (150, 250)
    # Set above the user: shown without who set it.
    seen = prices_pb2.Price()
    seen.CopyFrom(markup)
    seen.set_by, seen.set_above = "", True
    assert (markup.set_by, markup.set_above) == (reseller.name, False)
    assert await control.get(user, markup.name) == seen
    assert [p.name for p in (await control.list(user)).prices] == [markup.name]
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert_error(await rpc_error(control.create(user, "gpt-y", 500, 500)), denied, "ROLE_DENIED")
    # In particular it cannot remove or lower the markup its reseller set on it.
    assert_error(await rpc_error(control.update(user, markup.name, 150, 250)), denied, "ROLE_DENIED")
    assert_error(await rpc_error(control.delete(user, markup.name)), denied, "ROLE_DENIED")
    assert amounts(await control.get(reseller, markup.name)) == (150, 250)


# -- who set a price ------------------------------------------------------------


async def test_a_sub_reseller_cannot_remove_or_lower_what_its_parent_set_on_it(control: Control) -> None:
    admin = control.admin
    await control.create(admin, "gpt-x", 100, 200)
    parent = await control.new_manager(admin)
    sub = await control.new_manager(parent, accounts_pb2.ROLE_RESELLER)
    user = await control.new_account(sub)
    on_sub = await control.create(parent, "gpt-x", 300, 400, parent=sub.name)
    assert (on_sub.account, on_sub.set_by, on_sub.set_above) == (sub.name, parent.name, False)

    # The sub-reseller sees the price on its own account, but not who set it above it.
    [listed] = (await control.list(sub)).prices
    assert (listed.name, listed.set_by, listed.set_above) == (on_sub.name, "", True)
    assert f'"{parent.name}"' not in str(listed) + str(await control.get(sub, on_sub.name))

    denied = grpc.StatusCode.PERMISSION_DENIED
    for attempt in (
        control.delete(sub, on_sub.name),
        control.update(sub, on_sub.name, 100, 200),  # down to the admin's price
        control.update(sub, on_sub.name, 300, 0, OUTPUT),
        control.update(sub, on_sub.name, 999, 999),  # even up: the price is not the sub-reseller's
    ):
        assert_error(await rpc_error(attempt), denied, "PRICE_SET_ABOVE")
    # No way around it: no second price on the account, no cheaper one below it.
    error = await rpc_error(control.create(sub, "gpt-x", 100, 200))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
    error = await rpc_error(control.create(sub, "gpt-x", 100, 200, parent=user.name))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "PRICE_BELOW_PARENT")

    # Nothing changed, for anybody.
    assert await control.get(parent, on_sub.name) == on_sub
    assert amounts(await control.resolve(parent, "gpt-x", sub.name)) == (300, 400)
    assert amounts(await control.resolve(sub, "gpt-x", user.name)) == (300, 400)

    # Its own markup below it is its own to change, and the parent can take it over.
    markup = await control.create(sub, "gpt-x", 350, 450, parent=user.name)
    assert (markup.set_by, markup.set_above) == (sub.name, False)
    assert amounts(await control.update(sub, markup.name, 360, 0, INPUT)) == (360, 450)
    taken = await control.update(parent, markup.name, 370, 0, INPUT)
    assert (taken.set_by, amounts(taken)) == (parent.name, (370, 450))
    assert_error(await rpc_error(control.delete(sub, markup.name)), denied, "PRICE_SET_ABOVE")
    assert_error(await rpc_error(control.update(sub, markup.name, 400, 500)), denied, "PRICE_SET_ABOVE")
    assert amounts(await control.resolve(sub, "gpt-x", user.name)) == (370, 450)
    # The setter and the accounts above it still may.
    await control.delete(admin, markup.name)
    await control.delete(parent, on_sub.name)
    assert amounts(await control.resolve(sub, "gpt-x", user.name)) == (100, 200)


async def test_resolve_shows_a_customer_what_it_pays_but_not_its_resellers_margin(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    customer = await control.new_manager(reseller, accounts_pb2.ROLE_RESELLER)
    user = await control.new_account(customer)
    await control.create(admin, "gpt-x", 100, 200)  # the reseller's wholesale cost
    await control.create(reseller, "gpt-x", 150, 220)  # its own price
    await control.create(reseller, "gpt-x", 180, 230, parent=customer.name)  # what it charges the customer
    own = await control.create(customer, "gpt-x", 190, 260, parent=user.name)

    mine = await control.resolve(customer, "gpt-x")
    assert (mine.priced, amounts(mine), inherited(mine), list(mine.sources)) == (True, (180, 230), (180, 230), [])
    below = await control.resolve(customer, "gpt-x", user.name)
    assert (amounts(below), inherited(below), list(below.sources)) == ((190, 260), (180, 230), [own])
    for reply in (mine, below):
        text = str(reply)
        assert f'"{admin.name}"' not in text and f'"{reseller.name}"' not in text, "no account above is named"

    # The reseller sees its own prices as sources, and the admin's only as the inherited figure.
    seen = await control.resolve(reseller, "gpt-x", user.name)
    assert [(p.account, amounts(p)) for p in seen.sources] == [
        (reseller.name, (150, 220)),
        (customer.name, (180, 230)),
        (user.name, (190, 260)),
    ]
    assert inherited(seen) == (100, 200) and f'"{admin.name}"' not in str(seen)


async def test_an_unpriced_model_is_not_served_and_a_zero_price_is(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_account(reseller)
    secret = await control.new_key(reseller, user.name, api_keys_pb2.SCOPE_INFERENCE)
    service = bearer(control.service_token)
    key_hash = keys.hash_secret_bytes(secret)

    def authorize(model: str) -> gateway_pb2.AuthorizeRequest:
        return gateway_pb2.AuthorizeRequest(request_id=str(uuid.uuid4()), key_hash=key_hash, model=model)

    lease = gateway_pb2.GrantLeaseRequest(key_hash=key_hash, model="gpt-x", ttl=duration_pb2.Duration(seconds=1))
    for attempt in (
        control.gateway.Authorize(authorize("gpt-x"), metadata=service),
        control.gateway.GrantLease(lease, metadata=service),
    ):
        assert_error(await rpc_error(attempt), grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_AVAILABLE")
    batch = await control.gateway.BatchAuthorize(
        gateway_pb2.BatchAuthorizeRequest(requests=[authorize("gpt-x"), authorize("gpt-y")]), metadata=service
    )
    assert [r.error_reason for r in batch.results] == [error_reason_pb2.MODEL_NOT_AVAILABLE] * 2
    verified = await control.gateway.VerifyApiKey(gateway_pb2.VerifyApiKeyRequest(key_hash=key_hash), metadata=service)
    assert list(verified.priced_models) == []
    assert await UsageRecord.all().count() == 0

    # An explicit zero price serves the model (for free); the reseller's markup serves another.
    await control.create(admin, "gpt-x", 0, 0)
    await control.create(admin, "gpt-y", 2, 2)
    await control.create(reseller, "gpt-y", 5, 5, parent=user.name)
    settled = await control.complete(secret, "gpt-x", 1000, 1000)
    assert settled.usage_record.cost_micros == 0
    assert (await control.complete(secret, "gpt-y", 1_000_000, 0)).usage_record.cost_micros == 5
    verified = await control.gateway.VerifyApiKey(gateway_pb2.VerifyApiKeyRequest(key_hash=key_hash), metadata=service)
    assert list(verified.priced_models) == ["gpt-x", "gpt-y"]
    assert_error(
        await rpc_error(control.gateway.Authorize(authorize("gpt-z"), metadata=service)),
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_AVAILABLE",
    )


# -- isolation -----------------------------------------------------------------


async def test_a_reseller_cannot_reach_the_prices_of_another_subtree(control: Control) -> None:
    admin = control.admin
    reseller_a = await control.new_manager(admin)
    reseller_b = await control.new_manager(admin)
    user_a = await control.new_account(reseller_a)
    base = await control.create(admin, "gpt-x", 100, 200)
    price_a = await control.create(reseller_a, "gpt-x", 150, 250)
    price_user_a = await control.create(reseller_a, "gpt-x", 160, 260, parent=user_a.name)

    async def not_found(call: Awaitable[object]) -> tuple[grpc.StatusCode, str | None, bytes]:
        error = await rpc_error(call)
        assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        return error.code(), error.details(), status.SerializeToString()

    b = reseller_b
    for hidden in (price_a.name, price_user_a.name, base.name):  # the root's price is not B's either
        assert await not_found(control.get(b, hidden)) == await not_found(control.get(b, "prices/999999"))
        assert await not_found(control.delete(b, hidden)) == await not_found(control.delete(b, "prices/999999"))
        assert await not_found(control.update(b, hidden, 999, 999)) == await not_found(
            control.update(b, "prices/999999", 999, 999)
        )
    for account in (reseller_a.name, user_a.name, admin.name):
        assert await not_found(control.list(b, parent=account)) == await not_found(
            control.list(b, parent="accounts/999999")
        )
        assert await not_found(control.create(b, "gpt-z", 999, 999, parent=account)) == await not_found(
            control.create(b, "gpt-z", 999, 999, parent="accounts/999999")
        )
        assert await not_found(control.resolve(b, "gpt-x", account)) == await not_found(
            control.resolve(b, "gpt-x", "accounts/999999")
        )

    # Nothing of A's changed, and A still sees its own.
    assert await control.get(reseller_a, price_a.name) == price_a
    assert await control.get(reseller_a, price_user_a.name) == price_user_a
    assert [p.model for p in (await control.list(reseller_a)).prices] == ["gpt-x"]
    assert amounts(await control.resolve(reseller_a, "gpt-x", user_a.name)) == (160, 260)


# -- cost of requests ----------------------------------------------------------


async def test_settle_stores_the_cost_at_the_price_in_force(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    other = await control.new_manager(admin)
    user = await control.new_account(reseller)
    secret = await control.new_key(reseller, user.name, api_keys_pb2.SCOPE_INFERENCE)
    other_secret = await control.new_key(other, "", api_keys_pb2.SCOPE_INFERENCE)
    await control.create(admin, "gpt-x", 100, 200)
    await control.create(admin, "gpt-y", 1_000, 1_000)
    await control.create(reseller, "gpt-x", 1_500_000, 2_500_003)

    first = await control.complete(secret, "gpt-x", 1234, 567)
    first_cost = expected_cost(1234, 567, 1_500_000, 2_500_003)
    assert first.usage_record.cost_micros == first_cost == 3269
    # A repeated settle reports the stored cost and changes nothing.
    service = bearer(control.service_token)
    repeat = gateway_pb2.SettleRequest(
        request_id=first.usage_record.request_id,
        input_tokens=10**6,
        output_tokens=10**6,
        status=usage_pb2.USAGE_STATUS_SUCCEEDED,
        source=usage_pb2.USAGE_SOURCE_REPORTED,
    )
    repeated = await control.gateway.Settle(repeat, metadata=service)
    assert repeated.already_settled
    assert repeated.usage_record.cost_micros == first_cost

    # A model without a price is not served at all (it would cost nothing).
    refused = await rpc_error(control.complete(secret, "no-price", 1000, 1000))
    assert_error(refused, grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_AVAILABLE")
    tiny = await control.complete(secret, "gpt-y", 1, 0)  # 0.001 micros rounds up to 1
    assert tiny.usage_record.cost_micros == 1
    elsewhere = await control.complete(other_secret, "gpt-x", 1234, 567)  # only the admin's base applies there
    assert elsewhere.usage_record.cost_micros == expected_cost(1234, 567, 100, 200)

    # The admin raises the base input price above the reseller's: the maximum applies from now on.
    [base] = [p for p in (await control.list(admin)).prices if p.model == "gpt-x"]
    await control.update(admin, base.name, 2_000_000, 0, INPUT)
    second = await control.complete(secret, "gpt-x", 1000, 3)
    second_cost = expected_cost(1000, 3, 2_000_000, 2_500_003)
    assert second.usage_record.cost_micros == second_cost

    listed = await control.usage.ListUsageRecords(
        usage_pb2.ListUsageRecordsRequest(parent=reseller.name), metadata=bearer(admin.secret)
    )
    costs = {r.request_id: r.cost_micros for r in listed.usage_records}
    assert costs == {
        first.usage_record.request_id: first_cost,  # settled before the change: its cost stays
        tiny.usage_record.request_id: 1,
        second.usage_record.request_id: second_cost,
    }

    start, end = stamp(T0 - timedelta(hours=1)), stamp(T0 + timedelta(hours=1))
    by_model = await control.usage.SummarizeUsage(
        usage_pb2.SummarizeUsageRequest(
            parent=reseller.name, group_by=[usage_pb2.USAGE_GROUP_MODEL], start_time=start, end_time=end
        ),
        metadata=bearer(reseller.secret),
    )
    assert {(s.model, s.requests, s.cost_micros) for s in by_model.summaries} == {
        ("gpt-x", 2, first_cost + second_cost),
        ("gpt-y", 1, 1),
    }
    total = await control.usage.SummarizeUsage(
        usage_pb2.SummarizeUsageRequest(start_time=start, end_time=end), metadata=bearer(admin.secret)
    )
    [everything] = total.summaries
    assert everything.requests == 4
    assert everything.cost_micros == first_cost + second_cost + 1 + elsewhere.usage_record.cost_micros


async def test_an_absurd_token_count_saturates_the_stored_cost(control: Control) -> None:
    await control.create(control.admin, "gpt-x", 10**12, 10**12)
    user = await control.new_account(control.admin)
    secret = await control.new_key(control.admin, user.name, api_keys_pb2.SCOPE_INFERENCE)
    settled = await control.complete(secret, "gpt-x", 2**62, 2**62)
    assert settled.usage_record.cost_micros == 2**63 - 1
    listed = await control.usage.ListUsageRecords(
        usage_pb2.ListUsageRecordsRequest(parent=user.name), metadata=bearer(control.admin.secret)
    )
    assert [r.cost_micros for r in listed.usage_records] == [2**63 - 1]


async def test_an_unsettled_record_costs_nothing_yet(control: Control) -> None:
    await control.create(control.admin, "gpt-x", 100, 200)
    user = await control.new_account(control.admin)
    secret = await control.new_key(control.admin, user.name, api_keys_pb2.SCOPE_INFERENCE)
    authorize = gateway_pb2.AuthorizeRequest(
        request_id=str(uuid.uuid4()), key_hash=keys.hash_secret_bytes(secret), model="gpt-x", max_output_tokens=10
    )
    await control.gateway.Authorize(authorize, metadata=bearer(control.service_token))
    listed = await control.usage.ListUsageRecords(
        usage_pb2.ListUsageRecordsRequest(parent=user.name), metadata=bearer(control.admin.secret)
    )
    [record] = listed.usage_records
    assert (record.status, record.cost_micros) == (usage_pb2.USAGE_STATUS_RESERVED, 0)


# -- upgrade -------------------------------------------------------------------

ROWS_BEFORE_PRICES = """
INSERT INTO account (id, email, display_name, role, path, state, created_at, updated_at)
VALUES (1, 'root@example.com', '', 1, '/1/', 1, '2030-01-01 00:00:00+00:00', '2030-01-01 00:00:00+00:00');
INSERT INTO api_key (id, account_id, key_hash, prefix, display_name, scopes, created_at)
VALUES (1, 1, 'aaaa', 'co-aaaa', '', 1, '2030-01-01 00:00:00+00:00');
INSERT INTO usage_record (
    request_id, api_key_id, account_id, model, input_tokens, output_tokens, estimated_input_tokens,
    max_output_tokens, latency_us, status, source, http_status, stream, created_at
) VALUES (
    '6f0e1b1c-0000-4000-8000-000000000001', 1, 1, 'gpt-x', 10, 20, 10, 20, 1000, 2, 1, 200, FALSE,
    '2030-01-01 00:00:00+00:00'
);
"""


async def test_upgrading_a_database_with_usage_rows_costs_them_zero(empty_database_url: str) -> None:
    """0003 -> 0004 on a database that already holds usage rows (a NOT NULL column needs its DB default)."""
    async with TortoiseContext():
        await migrate(config=tortoise_config(empty_database_url), target="control.0003_usage_query_indexes")
    async with TortoiseContext() as ctx:
        await ctx.init(config=tortoise_config(empty_database_url))
        await ctx.db().execute_script(ROWS_BEFORE_PRICES)
        await ctx.close_connections()
    async with open_database(empty_database_url):
        [record] = await UsageRecord.all()
        assert (record.model, record.input_tokens, record.cost_micros) == ("gpt-x", 10, 0)
        assert await Price.all().count() == 0


async def test_health_reports_the_price_service(database_url: str) -> None:
    settings = ControlSettings(grpc_address="127.0.0.1:0", database_url=database_url, service_token="t" * 32)
    async with (
        ControlServer(settings) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="claudeopus.v1.PriceService"))  # type: ignore[attr-defined]
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
