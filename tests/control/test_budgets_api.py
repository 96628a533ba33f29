"""BudgetService end to end: setting, reading, listing, changing and removing budgets.

Served in-process by the real ``ControlServer`` with an injected clock, driven with
the generated stubs and management keys; the last section drives the same server
through the hand-written ``AsyncClient``. Errors are checked on the wire: status
code and ``google.rpc.ErrorInfo`` reason (plus the ``google.rpc.BadRequest`` fields
for INVALID_ARGUMENT). Usage that budgets start from is written through
GatewayService.Authorize/Settle at chosen times, as the edge would.
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
from grpc_status import rpc_status

from claudeopus import keys
from claudeopus.client import (
    AlreadyExistsError,
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from claudeopus.client import _requests as build
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    budgets_pb2,
    budgets_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    prices_pb2,
    prices_pb2_grpc,
    usage_pb2,
)
from tests.support.clock import FakeClock
from tests.support.control_server import in_process_control
from tests.support.prices import FREE_MODELS
from tests.support.rpc import assert_error, bearer, error_info, rpc_error

T0 = datetime(2030, 1, 10, 12, tzinfo=UTC)
INPUT = budgets_pb2.BUDGET_METRIC_INPUT_TOKENS
OUTPUT = budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS
TOKENS = budgets_pb2.BUDGET_METRIC_TOTAL_TOKENS
COST = budgets_pb2.BUDGET_METRIC_COST_MICROS
TOTAL = budgets_pb2.BUDGET_PERIOD_TOTAL
DAILY = budgets_pb2.BUDGET_PERIOD_DAILY
MONTHLY = budgets_pb2.BUDGET_PERIOD_MONTHLY
MAX_LIMIT = 2**62
INVALID, FIELD_INVALID = grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"
DENIED = grpc.StatusCode.PERMISSION_DENIED


# -- harness -------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def seen_below(budget: budgets_pb2.Budget) -> budgets_pb2.Budget:
    """``budget`` as an account below its setter reads it: set above, by an account it is not told."""
    seen = budgets_pb2.Budget()
    seen.CopyFrom(budget)
    seen.set_by, seen.set_above = "", True
    return seen


@dataclass
class Manager:
    """An account with a management key (``key`` is that key's resource name)."""

    account: accounts_pb2.Account
    key: str
    secret: str

    @property
    def name(self) -> str:
        return self.account.name


@dataclass
class Control:
    clock: FakeClock
    service_token: str
    target: str
    admin: Manager
    accounts: accounts_pb2_grpc.AccountServiceAsyncStub
    keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub
    budgets: budgets_pb2_grpc.BudgetServiceAsyncStub
    prices: prices_pb2_grpc.PriceServiceAsyncStub
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub

    async def new_account(
        self, caller: Manager, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_USER, parent: str = ""
    ) -> accounts_pb2.Account:
        spec = accounts_pb2.Account(email=f"a-{secrets.token_hex(6)}@example.com", role=role)
        request = accounts_pb2.CreateAccountRequest(parent=parent, account=spec)
        return await self.accounts.CreateAccount(request, metadata=bearer(caller.secret))

    async def new_key(
        self, caller: Manager, parent: str, scope: api_keys_pb2.Scope.ValueType = api_keys_pb2.SCOPE_INFERENCE
    ) -> tuple[str, str]:
        """(key name, secret)."""
        request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=api_keys_pb2.ApiKey(scopes=[scope]))
        created = await self.keys.CreateApiKey(request, metadata=bearer(caller.secret))
        return created.api_key.name, created.secret

    async def new_manager(
        self, caller: Manager, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_RESELLER, parent: str = ""
    ) -> Manager:
        account = await self.new_account(caller, role, parent)
        return Manager(account, *await self.new_key(caller, account.name, api_keys_pb2.SCOPE_MANAGEMENT))

    async def create(
        self,
        caller: Manager,
        parent: str,
        metric: budgets_pb2.BudgetMetric.ValueType,
        period: budgets_pb2.BudgetPeriod.ValueType,
        limit: int,
        *,
        request_id: str = "",
    ) -> budgets_pb2.Budget:
        spec = budgets_pb2.Budget(metric=metric, period=period, limit=limit)
        request = budgets_pb2.CreateBudgetRequest(parent=parent, budget=spec, request_id=request_id)
        return await self.budgets.CreateBudget(request, metadata=bearer(caller.secret))

    async def get(self, caller: Manager, name: str) -> budgets_pb2.Budget:
        return await self.budgets.GetBudget(budgets_pb2.GetBudgetRequest(name=name), metadata=bearer(caller.secret))

    async def list(self, caller: Manager, **fields: object) -> budgets_pb2.ListBudgetsResponse:
        request = budgets_pb2.ListBudgetsRequest(**fields)  # type: ignore[arg-type]
        return await self.budgets.ListBudgets(request, metadata=bearer(caller.secret))

    async def update(self, caller: Manager, name: str, limit: int, *paths: str) -> budgets_pb2.Budget:
        request = budgets_pb2.UpdateBudgetRequest(
            budget=budgets_pb2.Budget(name=name, limit=limit), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return await self.budgets.UpdateBudget(request, metadata=bearer(caller.secret))

    async def delete(self, caller: Manager, name: str) -> None:
        await self.budgets.DeleteBudget(budgets_pb2.DeleteBudgetRequest(name=name), metadata=bearer(caller.secret))

    async def price(self, model: str, input_micros: int, output_micros: int) -> None:
        spec = prices_pb2.Price(
            model=model, input_micros_per_million=input_micros, output_micros_per_million=output_micros
        )
        request = prices_pb2.CreatePriceRequest(price=spec)
        await self.prices.CreatePrice(request, metadata=bearer(self.admin.secret))

    async def authorize(self, secret: str, model: str, *, at: datetime | None = None, max_output: int = 100) -> str:
        """Authorize one request of the key ``secret`` (at ``at``, else now); returns its request id."""
        if at is not None:
            self.clock.now = at
        request_id = str(uuid.uuid4())
        authorize = gateway_pb2.AuthorizeRequest(
            request_id=request_id,
            key_hash=keys.hash_secret_bytes(secret),
            model=model,
            max_output_tokens=max_output,
        )
        await self.gateway.Authorize(authorize, metadata=bearer(self.service_token))
        return request_id

    async def complete(
        self, secret: str, model: str, input_tokens: int, output_tokens: int, *, at: datetime | None = None
    ) -> gateway_pb2.SettleResponse:
        """Authorize and settle one request of the key ``secret``, authorized at ``at`` (else now)."""
        request_id = await self.authorize(secret, model, at=at)
        settle = gateway_pb2.SettleRequest(
            request_id=request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency=duration_pb2.Duration(nanos=5_000_000),
            status=usage_pb2.USAGE_STATUS_SUCCEEDED,
            source=usage_pb2.USAGE_SOURCE_REPORTED,
            http_status=200,
        )
        return await self.gateway.Settle(settle, metadata=bearer(self.service_token))


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[Control]:
    clock = FakeClock(T0)
    # The tests move the clock by days with reservations open: no sweep may expire them meanwhile.
    # Only priced models are served; the tests price gpt-x themselves.
    free = tuple(m for m in FREE_MODELS if m != "gpt-x")
    async with in_process_control(database_url, clock=clock, free_models=free, sweep_interval=3600.0) as running:
        yield Control(
            clock=clock,
            service_token=running.service_token,
            target=running.target,
            admin=Manager(running.admin, running.admin_key, running.admin_secret),
            accounts=running.accounts,
            keys=running.api_keys,
            budgets=running.budgets,
            prices=running.prices,
            gateway=running.gateway,
        )


def counts(budget: budgets_pb2.Budget) -> tuple[int, int, int, int]:
    """(limit, spent, reserved, remaining)."""
    return budget.limit, budget.spent, budget.reserved, budget.remaining


def bounds(budget: budgets_pb2.Budget) -> tuple[datetime | None, datetime | None]:
    start = budget.period_start_time.ToDatetime(tzinfo=UTC) if budget.HasField("period_start_time") else None
    end = budget.period_end_time.ToDatetime(tzinfo=UTC) if budget.HasField("period_end_time") else None
    return start, end


# -- happy paths ---------------------------------------------------------------


async def test_create_get_update_delete_a_budget(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    created = await control.create(admin, reseller.name, COST, MONTHLY, 50_000_000)
    assert created.name.startswith("budgets/")
    assert (created.owner, created.metric, created.period) == (reseller.name, COST, MONTHLY)
    assert counts(created) == (50_000_000, 0, 0, 50_000_000)
    assert created.set_by == admin.name
    assert created.HasField("create_time") and created.HasField("update_time")
    assert await control.get(admin, created.name) == created
    assert await control.get(reseller, created.name) == seen_below(created)  # the owner reads what is set on it

    control.clock.now = T0 + timedelta(hours=1)
    changed = await control.update(admin, created.name, 70_000_000, "limit")
    assert counts(changed) == (70_000_000, 0, 0, 70_000_000)
    assert changed.update_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=1)
    assert (changed.create_time, changed.owner, changed.metric, changed.period) == (
        created.create_time,
        created.owner,
        COST,
        MONTHLY,
    )
    assert (await control.update(admin, created.name, 60_000_000)).limit == 60_000_000  # no mask: the populated limit
    assert (await control.update(admin, created.name, 55_000_000, "*")).limit == 55_000_000
    # Without a mask an unpopulated (zero) limit is not a change; with the mask, 0 is a limit like any other.
    assert (await control.update(admin, created.name, 0)).limit == 55_000_000
    assert counts(await control.update(admin, created.name, 0, "limit")) == (0, 0, 0, 0)
    assert (await control.get(admin, created.name)).limit == 0

    await control.delete(admin, created.name)
    not_found = grpc.StatusCode.NOT_FOUND
    assert_error(await rpc_error(control.get(admin, created.name)), not_found, "RESOURCE_NOT_FOUND")
    assert_error(await rpc_error(control.delete(admin, created.name)), not_found, "RESOURCE_NOT_FOUND")
    assert_error(await rpc_error(control.update(admin, created.name, 1, "limit")), not_found, "RESOURCE_NOT_FOUND")
    assert (await control.list(admin, parent=reseller.name)).budgets == []
    # The owner, metric and period are free again.
    assert (await control.create(admin, reseller.name, COST, MONTHLY, 5)).limit == 5


async def test_every_metric_and_period_and_the_limits_bounds(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    made = []
    for metric in (INPUT, OUTPUT, TOKENS, COST):
        for period in (TOTAL, DAILY, MONTHLY):
            budget = await control.create(admin, reseller.name, metric, period, 0 if period == DAILY else MAX_LIMIT)
            assert (budget.metric, budget.period) == (metric, period)
            made.append(budget)
    assert [counts(b) for b in made if b.period == DAILY] == [(0, 0, 0, 0)] * 4
    assert [counts(b) for b in made if b.period == TOTAL] == [(MAX_LIMIT, 0, 0, MAX_LIMIT)] * 4
    listed = await control.list(admin, parent=reseller.name, page_size=100)
    assert list(listed.budgets) == made


async def test_a_budget_shows_its_current_utc_period(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    daily = await control.create(admin, reseller.name, TOKENS, DAILY, 1000)
    monthly = await control.create(admin, reseller.name, TOKENS, MONTHLY, 1000)
    total = await control.create(admin, reseller.name, TOKENS, TOTAL, 1000)
    assert bounds(daily) == (utc(2030, 1, 10), utc(2030, 1, 11))
    assert bounds(monthly) == (utc(2030, 1, 1), utc(2030, 2, 1))
    assert bounds(total) == (None, None)

    control.clock.now = utc(2030, 12, 31, 23, 59, 59)
    assert bounds(await control.get(admin, daily.name)) == (utc(2030, 12, 31), utc(2031, 1, 1))
    assert bounds(await control.get(admin, monthly.name)) == (utc(2030, 12, 1), utc(2031, 1, 1))
    control.clock.now = utc(2032, 2, 29, 0, 0, 0)  # a leap day, at its first instant
    assert bounds(await control.get(admin, daily.name)) == (utc(2032, 2, 29), utc(2032, 3, 1))
    assert bounds(await control.get(admin, monthly.name)) == (utc(2032, 2, 1), utc(2032, 3, 1))
    assert bounds(await control.get(admin, total.name)) == (None, None)


async def test_list_budgets_oldest_first_in_pages(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    key_name, _ = await control.new_key(admin, reseller.name)
    made = [
        await control.create(admin, reseller.name, metric, period, 1000)
        for metric, period in ((COST, MONTHLY), (INPUT, DAILY), (OUTPUT, TOTAL), (TOKENS, DAILY), (COST, DAILY))
    ]
    on_key = await control.create(admin, key_name, COST, MONTHLY, 10)

    first = await control.list(admin, parent=reseller.name, page_size=2)
    assert list(first.budgets) == made[:2]
    assert first.next_page_token
    second = await control.list(admin, parent=reseller.name, page_size=2, page_token=first.next_page_token)
    assert list(second.budgets) == made[2:4]
    third = await control.list(admin, parent=reseller.name, page_size=2, page_token=second.next_page_token)
    assert list(third.budgets) == made[4:]
    assert third.next_page_token == ""
    everything = await control.list(admin, parent=reseller.name)
    assert (list(everything.budgets), everything.next_page_token) == (made, "")

    # An account's list holds its own budgets only; a key's list holds the key's.
    assert list((await control.list(admin, parent=key_name)).budgets) == [on_key]
    # Without a parent: the caller's own account (here: what the admin set on the reseller).
    assert list((await control.list(reseller)).budgets) == [seen_below(b) for b in made]
    assert (await control.list(admin)).budgets == []


async def test_page_tokens_are_bound_to_the_caller_and_the_owner(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    other = await control.new_account(admin)
    for metric in (INPUT, OUTPUT, TOKENS):
        await control.create(admin, reseller.name, metric, DAILY, 10)
        await control.create(admin, other.name, metric, DAILY, 10)
    token = (await control.list(admin, parent=reseller.name, page_size=1)).next_page_token
    assert token
    for call in (
        control.list(admin, parent=other.name, page_size=1, page_token=token),  # another owner
        control.list(reseller, page_size=1, page_token=token),  # another caller, same owner
        control.list(admin, parent=reseller.name, page_size=1, page_token=token[:-2] + "AA"),  # edited
        control.list(admin, parent=reseller.name, page_token="garbage"),
    ):
        assert_error(await rpc_error(call), INVALID, "PAGE_TOKEN_INVALID", "page_token")
    error = await rpc_error(control.list(admin, parent=reseller.name, page_size=-1))
    assert_error(error, INVALID, FIELD_INVALID, "page_size")


# -- spent from usage ----------------------------------------------------------


@dataclass
class History:
    """A reseller with two users; the first has two keys. Usage before T0, written as the edge would."""

    reseller: Manager
    user: accounts_pb2.Account
    key1: str
    secret1: str
    key2: str


async def history(control: Control) -> History:
    await control.price("gpt-x", 1_000_000, 2_000_000)  # 1 micro per input token, 2 per output token
    reseller = await control.new_manager(control.admin)
    user = await control.new_account(reseller)
    stranger = await control.new_account(reseller)
    key1, secret1 = await control.new_key(reseller, user.name)
    key2, secret2 = await control.new_key(reseller, user.name)
    _, secret3 = await control.new_key(reseller, stranger.name)
    await control.complete(secret1, "gpt-x", 10, 5, at=utc(2029, 12, 31, 23))  # last month: TOTAL only
    await control.complete(secret1, "gpt-x", 20, 7, at=utc(2030, 1, 9, 12))  # this month, yesterday
    await control.complete(secret1, "gpt-x", 30, 11, at=utc(2030, 1, 10, 8))  # today
    await control.complete(secret2, "gpt-x", 40, 13, at=utc(2030, 1, 10, 9))  # today, the user's other key
    await control.complete(secret3, "gpt-x", 1000, 1000, at=utc(2030, 1, 10, 9))  # today, another user
    await control.authorize(secret1, "gpt-x", at=utc(2030, 1, 10, 10))  # in flight: 0 in + 100 out held, no cost
    control.clock.now = T0
    return History(reseller, user, key1, secret1, key2)


LIMIT = 10**6


def in_flight_hold(metric: int) -> int:
    """What the request left in flight by :func:`history` holds in a budget created now."""
    return 100 if metric in (OUTPUT, TOKENS) else 0


async def test_a_new_key_budget_starts_with_what_the_key_already_spent_this_period(control: Control) -> None:
    past = await history(control)
    reseller = past.reseller
    on_key = {
        (INPUT, DAILY): 30,
        (OUTPUT, MONTHLY): 7 + 11,
        (TOKENS, TOTAL): 15 + 27 + 41,
        (COST, MONTHLY): (20 + 14) + (30 + 22),
        (COST, TOTAL): (10 + 10) + (20 + 14) + (30 + 22),
    }
    made: dict[tuple[int, int], str] = {}
    for (metric, period), spent in on_key.items():
        budget = await control.create(reseller, past.key1, metric, period, LIMIT)
        held = in_flight_hold(metric)  # the request in flight joins the new budget
        assert counts(budget) == (LIMIT, spent, held, LIMIT - spent - held), (metric, period)
        assert counts(await control.get(reseller, budget.name)) == counts(budget)
        made[metric, period] = budget.name
    # The user's other key counts its own requests only.
    assert (await control.create(reseller, past.key2, INPUT, DAILY, LIMIT)).spent == 40

    # From now on the budgets count every request that touches them.
    await control.complete(past.secret1, "gpt-x", 3, 4)
    assert (await control.get(reseller, made[INPUT, DAILY])).spent == 30 + 3
    assert (await control.get(reseller, made[COST, MONTHLY])).spent == on_key[COST, MONTHLY] + 3 + 8
    assert (await control.get(reseller, made[TOKENS, TOTAL])).spent == on_key[TOKENS, TOTAL] + 7

    # A request in flight holds its worst case: 0 input tokens estimated, 100 output tokens, their cost.
    await control.authorize(past.secret1, "gpt-x", max_output=100)
    held = await control.get(reseller, made[COST, MONTHLY])
    assert (held.reserved, held.remaining) == (200, LIMIT - held.spent - 200)
    assert (await control.get(reseller, made[INPUT, DAILY])).reserved == 0

    # The next day the daily budgets start again; the monthly and total ones go on.
    control.clock.now = utc(2030, 1, 11, 0, 0, 1)
    daily = await control.get(reseller, made[INPUT, DAILY])
    assert (counts(daily), bounds(daily)) == ((LIMIT, 0, 0, LIMIT), (utc(2030, 1, 11), utc(2030, 1, 12)))
    assert (await control.get(reseller, made[COST, MONTHLY])).spent == on_key[COST, MONTHLY] + 11
    control.clock.now = utc(2030, 2, 1)
    assert counts(await control.get(reseller, made[COST, MONTHLY])) == (LIMIT, 0, 0, LIMIT)
    assert (await control.get(reseller, made[COST, TOTAL])).spent == on_key[COST, TOTAL] + 11


async def test_a_new_account_budget_starts_with_what_its_subtree_already_spent_this_period(control: Control) -> None:
    past = await history(control)
    admin, reseller, user = control.admin, past.reseller, past.user
    on_user = {
        (TOKENS, DAILY): 41 + 53,
        (COST, MONTHLY): (20 + 14) + (30 + 22) + (40 + 26),
        (INPUT, TOTAL): 10 + 20 + 30 + 40,
    }
    on_reseller = {(OUTPUT, TOTAL): 5 + 7 + 11 + 13 + 1000, (INPUT, DAILY): 30 + 40 + 1000}  # its other user too
    made: dict[tuple[str, int, int], str] = {}
    for owner, caller, expected in ((reseller.name, admin, on_reseller), (user.name, reseller, on_user)):
        for (metric, period), spent in expected.items():
            budget = await control.create(caller, owner, metric, period, LIMIT)
            held = in_flight_hold(metric)
            assert counts(budget) == (LIMIT, spent, held, LIMIT - spent - held), (owner, metric, period)
            made[owner, metric, period] = budget.name

    await control.complete(past.secret1, "gpt-x", 3, 4)
    assert (await control.get(reseller, made[user.name, TOKENS, DAILY])).spent == on_user[TOKENS, DAILY] + 7
    assert (await control.get(admin, made[reseller.name, OUTPUT, TOTAL])).spent == on_reseller[OUTPUT, TOTAL] + 4
    assert (await control.get(admin, made[reseller.name, INPUT, DAILY])).spent == on_reseller[INPUT, DAILY] + 3


async def test_a_limit_below_what_was_spent_leaves_nothing_and_refuses_the_next_request(control: Control) -> None:
    admin = control.admin
    user = await control.new_account(admin)
    key_name, secret = await control.new_key(admin, user.name)
    await control.complete(secret, "m", 500, 500)
    budget = await control.create(admin, key_name, TOKENS, DAILY, 800)
    assert counts(budget) == (800, 1000, 0, 0)  # remaining never goes below 0
    error = await rpc_error(control.authorize(secret, "m", max_output=1))
    assert_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXHAUSTED")
    assert dict(error_info(error).metadata) == {
        "budget_scope": "key",
        "budget": budget.name,
        "metric": "TOTAL_TOKENS",
        "period": "DAILY",
    }
    # Raising the limit makes room again.
    await control.update(admin, budget.name, 2000, "limit")
    await control.authorize(secret, "m", max_output=10)
    assert counts(await control.get(admin, budget.name)) == (2000, 1000, 10, 990)


# -- request ids and uniqueness --------------------------------------------------


async def test_request_id_makes_create_safe_to_retry(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    other = await control.new_account(admin)
    first = await control.create(admin, reseller.name, COST, MONTHLY, 100, request_id="r-1")
    control.clock.now = T0 + timedelta(minutes=5)
    again = await control.create(admin, reseller.name, COST, MONTHLY, 100, request_id="r-1")
    assert again == first
    assert len((await control.list(admin, parent=reseller.name)).budgets) == 1
    for args in ((COST, MONTHLY, 101), (COST, DAILY, 100), (INPUT, MONTHLY, 100)):
        error = await rpc_error(control.create(admin, reseller.name, *args, request_id="r-1"))
        assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")
    assert list((await control.list(admin, parent=reseller.name)).budgets) == [first]
    # Request ids are per owner.
    elsewhere = await control.create(admin, other.name, COST, MONTHLY, 100, request_id="r-1")
    assert elsewhere.name != first.name


async def test_one_budget_per_owner_metric_and_period(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    other = await control.new_account(admin)
    key_name, _ = await control.new_key(admin, reseller.name)
    await control.create(admin, reseller.name, COST, MONTHLY, 100)
    error = await rpc_error(control.create(admin, reseller.name, COST, MONTHLY, 50))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
    error = await rpc_error(control.create(admin, reseller.name, COST, MONTHLY, 50, request_id="fresh"))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
    # Another period, another metric, another account, a key of the same account: other budgets.
    await control.create(admin, reseller.name, COST, DAILY, 100)
    await control.create(admin, reseller.name, INPUT, MONTHLY, 100)
    await control.create(admin, other.name, COST, MONTHLY, 100)
    await control.create(admin, key_name, COST, MONTHLY, 100)
    error = await rpc_error(control.create(reseller, key_name, COST, MONTHLY, 10))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")


# -- bad input -------------------------------------------------------------------


async def test_create_rejects_bad_input(control: Control) -> None:
    admin = control.admin
    user = await control.new_account(admin)

    async def invalid(
        field: str, metric: int = COST, period: int = MONTHLY, limit: int = 1, parent: str = "", request_id: str = ""
    ) -> None:
        spec = budgets_pb2.Budget(metric=metric, period=period, limit=limit)  # type: ignore[arg-type]
        request = budgets_pb2.CreateBudgetRequest(parent=parent or user.name, budget=spec, request_id=request_id)
        error = await rpc_error(control.budgets.CreateBudget(request, metadata=bearer(admin.secret)))
        assert_error(error, INVALID, FIELD_INVALID, field)

    await invalid("budget.metric", metric=budgets_pb2.BUDGET_METRIC_UNSPECIFIED)
    await invalid("budget.metric", metric=99)
    await invalid("budget.period", period=budgets_pb2.BUDGET_PERIOD_UNSPECIFIED)
    await invalid("budget.period", period=7)
    await invalid("budget.limit", limit=-1)
    await invalid("budget.limit", limit=MAX_LIMIT + 1)
    await invalid("budget.limit", limit=2**63 - 1)
    await invalid("request_id", request_id="x" * 65)
    await invalid("request_id", request_id="bad\nid")
    for parent in ("users/1", "accounts/", "accounts/x", "apiKeys/-1", "budgets/1", "apiKeys/1/x"):
        await invalid("parent", parent=parent)
    not_found = grpc.StatusCode.NOT_FOUND
    for parent in ("accounts/999999", "apiKeys/999999"):
        assert_error(await rpc_error(control.create(admin, parent, COST, MONTHLY, 1)), not_found, "RESOURCE_NOT_FOUND")
    assert (await control.list(admin, parent=user.name)).budgets == []


async def test_update_rejects_bad_input(control: Control) -> None:
    admin = control.admin
    user = await control.new_account(admin)
    budget = await control.create(admin, user.name, COST, MONTHLY, 100)
    for paths in (("metric",), ("limit", "period"), ("owner",), ("spent",)):
        assert_error(
            await rpc_error(control.update(admin, budget.name, 5, *paths)), INVALID, FIELD_INVALID, "update_mask"
        )
    error = await rpc_error(control.update(admin, budget.name, -1, "limit"))
    assert_error(error, INVALID, FIELD_INVALID, "budget.limit")
    error = await rpc_error(control.update(admin, budget.name, MAX_LIMIT + 1))
    assert_error(error, INVALID, FIELD_INVALID, "budget.limit")
    for name in ("", "prices/1", "budgets/x", "budgets/"):
        assert_error(await rpc_error(control.update(admin, name, 5, "limit")), INVALID, FIELD_INVALID, "budget.name")
    error = await rpc_error(control.update(admin, "budgets/999999", 5, "limit"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert await control.get(admin, budget.name) == budget


async def test_bad_names(control: Control) -> None:
    admin = control.admin
    for name in ("budgets/x", "", "prices/1", "budgets/1/2"):
        assert_error(await rpc_error(control.get(admin, name)), INVALID, FIELD_INVALID, "name")
        assert_error(await rpc_error(control.delete(admin, name)), INVALID, FIELD_INVALID, "name")
    assert_error(await rpc_error(control.list(admin, parent="budgets/1")), INVALID, FIELD_INVALID, "parent")
    for call in (control.get(admin, "budgets/999999"), control.list(admin, parent="apiKeys/999999")):
        assert_error(await rpc_error(call), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_budget_calls_need_a_management_credential(control: Control) -> None:
    user = await control.new_account(control.admin)
    budget = await control.create(control.admin, user.name, COST, MONTHLY, 100)
    request = budgets_pb2.GetBudgetRequest(name=budget.name)
    error = await rpc_error(control.budgets.GetBudget(request))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")
    _, inference = await control.new_key(control.admin, user.name)
    error = await rpc_error(control.budgets.GetBudget(request, metadata=bearer(inference)))
    assert_error(error, DENIED, "KEY_SCOPE_DENIED")
    error = await rpc_error(control.budgets.GetBudget(request, metadata=bearer(control.service_token)))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_INVALID")


# -- who may set and change a budget ---------------------------------------------


async def test_nobody_sets_a_budget_on_its_own_account(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_manager(reseller, accounts_pb2.ROLE_USER)
    for caller in (admin, reseller, user):
        for parent in (caller.name, ""):  # empty: the caller's own account
            error = await rpc_error(control.create(caller, parent, COST, MONTHLY, 10**9))
            assert_error(error, DENIED, "SELF_CHANGE_DENIED")
    # Nor raises or removes the one set on it from above.
    on_reseller = await control.create(admin, reseller.name, COST, MONTHLY, 100)
    assert await control.get(reseller, on_reseller.name) == seen_below(on_reseller)
    assert_error(
        await rpc_error(control.update(reseller, on_reseller.name, 10**9, "limit")), DENIED, "SELF_CHANGE_DENIED"
    )
    assert_error(await rpc_error(control.delete(reseller, on_reseller.name)), DENIED, "SELF_CHANGE_DENIED")
    assert (await control.get(admin, on_reseller.name)).limit == 100
    assert (await control.list(reseller)).budgets == [seen_below(on_reseller)]


async def test_a_caller_limits_its_own_keys_and_changes_what_it_set(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_manager(reseller, accounts_pb2.ROLE_USER)
    inference_name, _ = await control.new_key(user, user.name)
    for caller, key_name in ((reseller, reseller.key), (user, user.key), (user, inference_name)):
        budget = await control.create(caller, key_name, TOKENS, DAILY, 1000)
        assert (budget.owner, budget.set_by) == (key_name, caller.name)
        assert (await control.update(caller, budget.name, 2000, "limit")).limit == 2000
        assert list((await control.list(caller, parent=key_name)).budgets) == [await control.get(caller, budget.name)]
        await control.delete(caller, budget.name)
        assert (await control.list(caller, parent=key_name)).budgets == []
    # What a user set on its own key, the reseller above it may change too.
    mine = await control.create(user, inference_name, COST, TOTAL, 50)
    assert (await control.update(reseller, mine.name, 40, "limit")).limit == 40
    await control.delete(admin, mine.name)


async def test_a_user_cannot_lift_what_its_reseller_put_on_its_key(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_manager(reseller, accounts_pb2.ROLE_USER)
    key_name, _ = await control.new_key(user, user.name)
    cap = await control.create(reseller, key_name, COST, MONTHLY, 1000)
    on_own_key = await control.create(reseller, user.key, INPUT, DAILY, 1000)
    assert await control.get(user, cap.name) == seen_below(cap)
    assert list((await control.list(user, parent=key_name)).budgets) == [seen_below(cap)]
    for held in (cap, on_own_key):
        error = await rpc_error(control.update(user, held.name, 10**9, "limit"))
        assert_error(error, DENIED, "BUDGET_HELD_ABOVE")
        assert_error(await rpc_error(control.update(user, held.name, 1, "limit")), DENIED, "BUDGET_HELD_ABOVE")
        assert_error(await rpc_error(control.delete(user, held.name)), DENIED, "BUDGET_HELD_ABOVE")
        assert await control.get(reseller, held.name) == held
    # The same holds one level up: the admin's cap on the reseller's key binds the reseller.
    on_reseller_key = await control.create(admin, reseller.key, COST, MONTHLY, 1000)
    assert_error(
        await rpc_error(control.update(reseller, on_reseller_key.name, 1, "limit")), DENIED, "BUDGET_HELD_ABOVE"
    )
    assert_error(await rpc_error(control.delete(reseller, on_reseller_key.name)), DENIED, "BUDGET_HELD_ABOVE")
    # The setter, and anyone above it, may.
    assert (await control.update(reseller, cap.name, 500, "limit")).limit == 500
    assert (await control.update(admin, cap.name, 400, "limit")).limit == 400
    await control.delete(admin, on_reseller_key.name)
    await control.delete(reseller, on_own_key.name)
    # The user may add its own tighter budget next to the reseller's.
    assert (await control.create(user, key_name, COST, DAILY, 100)).set_by == user.name


# -- a budget never above the one it sits under ----------------------------------


async def test_a_budget_may_not_be_larger_than_the_same_budget_above_it(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    user = await control.new_manager(reseller, accounts_pb2.ROLE_USER)
    key_name, _ = await control.new_key(reseller, user.name)
    failed = grpc.StatusCode.FAILED_PRECONDITION
    await control.create(admin, reseller.name, COST, MONTHLY, 1000)

    # An account below: at most the parent's limit.
    error = await rpc_error(control.create(reseller, user.name, COST, MONTHLY, 1001))
    assert_error(error, failed, "BUDGET_ABOVE_PARENT")
    assert reseller.name in (error.details() or "")  # the reseller may see its own budget
    on_user = await control.create(reseller, user.name, COST, MONTHLY, 1000)  # equal is fine
    # Other metrics and periods are not capped by it.
    assert (await control.create(reseller, user.name, COST, DAILY, 10**9)).limit == 10**9
    assert (await control.create(reseller, user.name, INPUT, MONTHLY, 10**9)).limit == 10**9

    # A key: at most its account's limit ...
    await control.update(reseller, on_user.name, 600, "limit")
    error = await rpc_error(control.create(reseller, key_name, COST, MONTHLY, 601))
    assert_error(error, failed, "BUDGET_ABOVE_PARENT")
    error = await rpc_error(control.create(user, user.key, INPUT, MONTHLY, 10**9 + 1))
    assert_error(error, failed, "BUDGET_ABOVE_PARENT")
    assert (await control.create(user, user.key, INPUT, MONTHLY, 10**9)).limit == 10**9
    # ... but a budget above the caller's own account is not compared: the user may not read the
    # reseller's budget, so neither a refusal nor its message may tell its limit. It caps the key anyway.
    await control.delete(reseller, on_user.name)
    on_key = await control.create(user, user.key, COST, MONTHLY, 1001)
    assert (await control.update(user, on_key.name, 5000, "limit")).limit == 5000

    # Updates follow the same rule; lowering the budget above leaves the ones below as they are.
    on_user = await control.create(reseller, user.name, COST, MONTHLY, 1000)
    error = await rpc_error(control.update(user, on_key.name, 1001, "limit"))
    assert_error(error, failed, "BUDGET_ABOVE_PARENT")
    assert user.name in (error.details() or "")  # the user's own account's budget: the user may read it
    [on_reseller] = (await control.list(admin, parent=reseller.name)).budgets
    assert (await control.update(admin, on_reseller.name, 10, "limit")).limit == 10
    assert (await control.get(reseller, on_user.name)).limit == 1000


async def test_a_budget_refusal_never_tells_a_limit_the_caller_cannot_read(control: Control) -> None:
    """A sub-reseller cannot learn its parent's own budget by trying limits on its sub-user's budgets."""
    admin = control.admin
    outer = await control.new_manager(admin)
    inner = await control.new_manager(outer, accounts_pb2.ROLE_RESELLER)
    user = await control.new_account(inner)
    await control.create(admin, outer.name, TOKENS, DAILY, 777)  # on outer: inner cannot read it
    for limit in (778, 10**6):
        created = await control.create(inner, user.name, TOKENS, DAILY, limit)
        assert created.limit == limit
        await control.delete(inner, created.name)
    key_name, _ = await control.new_key(inner, user.name)
    assert (await control.create(inner, key_name, TOKENS, DAILY, 10**6)).limit == 10**6
    # What the caller can read still bounds it, and the message names that budget only.
    on_inner = await control.create(outer, inner.name, TOKENS, DAILY, 500)
    error = await rpc_error(control.create(inner, user.name, TOKENS, DAILY, 501))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_ABOVE_PARENT")
    assert "777" not in (error.details() or "") and outer.name not in (error.details() or "")
    assert on_inner.owner == inner.name and inner.name in (error.details() or "")


async def test_a_budget_set_above_the_caller_does_not_name_its_setter(control: Control) -> None:
    """A customer reads the budget its reseller's parent put on it, but not which account that is."""
    admin = control.admin
    outer = await control.new_manager(admin)
    inner = await control.new_manager(outer, accounts_pb2.ROLE_RESELLER)
    on_inner = await control.create(outer, inner.name, TOKENS, DAILY, 500)
    seen = await control.get(inner, on_inner.name)
    listed = (await control.list(inner, parent=inner.name)).budgets
    assert (seen.set_by, seen.set_above) == ("", True)
    assert [(b.set_by, b.set_above) for b in listed] == [("", True)]
    assert outer.name not in str(seen) + str(listed)
    # The setter itself, and anyone above it, still sees who set it.
    assert ((await control.get(outer, on_inner.name)).set_by, on_inner.set_above) == (outer.name, False)
    assert (await control.get(admin, on_inner.name)).set_by == outer.name


async def test_the_hierarchy_rule_reads_every_ancestor(control: Control) -> None:
    admin = control.admin
    outer = await control.new_manager(admin)
    inner = await control.new_manager(outer, accounts_pb2.ROLE_RESELLER)
    user = await control.new_account(inner)
    failed = grpc.StatusCode.FAILED_PRECONDITION
    await control.create(admin, outer.name, TOKENS, DAILY, 100)
    # No budget on the inner reseller: the outer one caps its user all the same (for outer, who reads it).
    assert_error(await rpc_error(control.create(outer, user.name, TOKENS, DAILY, 101)), failed, "BUDGET_ABOVE_PARENT")
    on_user = await control.create(outer, user.name, TOKENS, DAILY, 100)
    await control.delete(outer, on_user.name)
    # The tightest budget on the chain is the one that counts.
    await control.create(outer, inner.name, TOKENS, DAILY, 50)
    assert_error(await rpc_error(control.create(inner, user.name, TOKENS, DAILY, 51)), failed, "BUDGET_ABOVE_PARENT")
    assert_error(await rpc_error(control.create(admin, user.name, TOKENS, DAILY, 51)), failed, "BUDGET_ABOVE_PARENT")
    assert (await control.create(inner, user.name, TOKENS, DAILY, 50)).limit == 50


# -- isolation -----------------------------------------------------------------


async def test_a_reseller_cannot_reach_the_budgets_of_another_subtree(control: Control) -> None:
    admin = control.admin
    reseller_a = await control.new_manager(admin)
    reseller_b = await control.new_manager(admin)
    user_a = await control.new_manager(reseller_a, accounts_pb2.ROLE_USER)
    key_a, _ = await control.new_key(reseller_a, user_a.name)
    on_a = await control.create(admin, reseller_a.name, COST, MONTHLY, 1000)
    on_user_a = await control.create(reseller_a, user_a.name, COST, MONTHLY, 1000)
    on_key_a = await control.create(reseller_a, key_a, COST, MONTHLY, 1000)

    async def not_found(call: Awaitable[object]) -> tuple[grpc.StatusCode, str | None, bytes]:
        error = await rpc_error(call)
        assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        return error.code(), error.details(), status.SerializeToString()

    b = reseller_b
    missing = "budgets/999999"
    for hidden in (on_a.name, on_user_a.name, on_key_a.name):
        assert await not_found(control.get(b, hidden)) == await not_found(control.get(b, missing))
        assert await not_found(control.delete(b, hidden)) == await not_found(control.delete(b, missing))
        assert await not_found(control.update(b, hidden, 1, "limit")) == await not_found(
            control.update(b, missing, 1, "limit")
        )
    for owner, nothing in (
        (reseller_a.name, "accounts/999999"),
        (user_a.name, "accounts/999999"),
        (admin.name, "accounts/999999"),
        (key_a, "apiKeys/999999"),
        (admin.key, "apiKeys/999999"),
    ):
        assert await not_found(control.list(b, parent=owner)) == await not_found(control.list(b, parent=nothing))
        assert await not_found(control.create(b, owner, INPUT, TOTAL, 1)) == await not_found(
            control.create(b, nothing, INPUT, TOTAL, 1)
        )
    # Upward is outside too: a user does not see its reseller's budget.
    assert await not_found(control.get(user_a, on_a.name)) == await not_found(control.get(user_a, missing))
    assert await not_found(control.list(user_a, parent=reseller_a.name)) == await not_found(
        control.list(user_a, parent="accounts/999999")
    )

    # Nothing of A's changed.
    assert await control.get(admin, on_a.name) == on_a
    assert await control.get(reseller_a, on_user_a.name) == on_user_a
    assert await control.get(user_a, on_key_a.name) == seen_below(on_key_a)


async def test_the_budgets_of_a_deleted_account_are_gone_from_view(control: Control) -> None:
    admin = control.admin
    user = await control.new_account(admin)
    budget = await control.create(admin, user.name, COST, MONTHLY, 100)
    await control.accounts.DeleteAccount(
        accounts_pb2.DeleteAccountRequest(name=user.name), metadata=bearer(admin.secret)
    )
    assert_error(await rpc_error(control.get(admin, budget.name)), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


# -- the hand-written client -----------------------------------------------------


async def test_the_async_client_covers_every_budget_call(control: Control) -> None:
    reseller = await control.new_manager(control.admin)
    user = await control.new_account(reseller)
    async with AsyncClient(control.target, key=reseller.secret) as client:
        made = [
            await client.create_budget(user.name, metric="cost_micros", period="monthly", limit=100, request_id="r"),
            await client.create_budget(user.name, metric="INPUT_TOKENS", period="DAILY", limit=10),
            await client.create_budget(
                user.name, metric="BUDGET_METRIC_OUTPUT_TOKENS", period="BUDGET_PERIOD_TOTAL", limit=1
            ),
            await client.create_budget(user.name, metric=TOKENS, period=int(DAILY), limit=5),
        ]
        assert [(b.metric, b.period) for b in made] == [
            (COST, MONTHLY),
            (INPUT, DAILY),
            (OUTPUT, TOTAL),
            (TOKENS, DAILY),
        ]
        retried = await client.create_budget(
            user.name, metric="cost_micros", period="monthly", limit=100, request_id="r"
        )
        assert retried == made[0]

        assert await client.get_budget(made[1].name) == made[1]
        page = await client.list_budgets(user.name, page_size=3)
        assert list(page.budgets) == made[:3] and page.next_page_token
        rest = await client.list_budgets(user.name, page_size=3, page_token=page.next_page_token)
        assert (list(rest.budgets), rest.next_page_token) == (made[3:], "")
        assert [b async for b in client.iter_budgets(user.name, page_size=1)] == made
        assert [b.name async for b in client.iter_budgets(parent=user.name)] == [b.name for b in made]

        assert (await client.update_budget(made[0].name, limit=0)).limit == 0  # the mask makes 0 a change
        assert (await client.get_budget(made[0].name)).remaining == 0
        assert (await client.update_budget(made[0].name, limit=70)).limit == 70
        await client.delete_budget(made[0].name)
        assert [b.name async for b in client.iter_budgets(user.name)] == [b.name for b in made[1:]]

        with pytest.raises(NotFoundError) as missing:
            await client.get_budget(made[0].name)
        assert missing.value.reason == "RESOURCE_NOT_FOUND"
        with pytest.raises(AlreadyExistsError) as duplicate:
            await client.create_budget(user.name, metric="input_tokens", period="daily", limit=10)
        assert duplicate.value.reason == "RESOURCE_EXISTS"
        with pytest.raises(PermissionDeniedError) as own:
            await client.create_budget(reseller.name, metric="input_tokens", period="daily", limit=10)
        assert own.value.reason == "SELF_CHANGE_DENIED"
        with pytest.raises(InvalidArgumentError) as bad:
            await client.create_budget(user.name, metric=0, period="daily", limit=10)
        assert (bad.value.reason, list(bad.value.field_violations)) == ("FIELD_INVALID", ["budget.metric"])
    async with AsyncClient(control.target, key=control.admin.secret) as root:
        cap = await root.create_budget(reseller.name, metric="cost_micros", period="total", limit=5)
        on_reseller_key = await root.create_budget(reseller.key, metric="input_tokens", period="total", limit=5)
    assert cap.set_by == on_reseller_key.set_by == control.admin.name
    async with AsyncClient(control.target, key=reseller.secret) as client:
        with pytest.raises(FailedPreconditionError) as above:
            await client.create_budget(user.name, metric="cost_micros", period="total", limit=6)
        assert above.value.reason == "BUDGET_ABOVE_PARENT"
        with pytest.raises(PermissionDeniedError) as held:
            await client.update_budget(on_reseller_key.name, limit=1)
        assert held.value.reason == "BUDGET_HELD_ABOVE"


@pytest.mark.parametrize(
    "call",
    [
        lambda: build.create_budget("accounts/2", "cost", "monthly", 1, ""),
        lambda: build.create_budget("accounts/2", "Cost_Micros", "monthly", 1, ""),
        lambda: build.create_budget("accounts/2", "BUDGET_METRIC_UNSPECIFIED", "monthly", 1, ""),
        lambda: build.create_budget("accounts/2", "cost_micros", "weekly", 1, ""),
        lambda: build.create_budget("accounts/2", "cost_micros", "Monthly", 1, ""),
        lambda: build.create_budget("accounts/2", "cost_micros", "BUDGET_METRIC_COST_MICROS", 1, ""),
        lambda: build.create_budget("accounts/2", "", "monthly", 1, ""),
    ],
)
def test_unknown_metric_and_period_names_are_refused_before_any_call(call: object) -> None:
    with pytest.raises(ValueError, match="unknown"):
        call()  # type: ignore[operator]


def test_requests_name_the_limit_in_the_update_mask_and_carry_the_enums() -> None:
    update = build.update_budget("budgets/3", 0)
    assert (list(update.update_mask.paths), update.budget.name, update.budget.limit) == (["limit"], "budgets/3", 0)
    create = build.create_budget("apiKeys/4", "total_tokens", "daily", 7, "r-1")
    assert (create.parent, create.request_id) == ("apiKeys/4", "r-1")
    assert (create.budget.metric, create.budget.period, create.budget.limit) == (TOKENS, DAILY, 7)
    for metric in ("cost_micros", "COST_MICROS", "BUDGET_METRIC_COST_MICROS", COST):
        assert build.metric(metric) == COST
    for period in ("monthly", "MONTHLY", "BUDGET_PERIOD_MONTHLY", MONTHLY):
        assert build.period(period) == MONTHLY


def test_both_clients_have_a_method_for_every_budget_rpc() -> None:
    service = budgets_pb2.DESCRIPTOR.services_by_name["BudgetService"]
    snake = {"".join("_" + c.lower() if c.isupper() else c for c in rpc.name).lstrip("_") for rpc in service.methods}
    for cls in (Client, AsyncClient):
        assert snake <= set(dir(cls)), snake - set(dir(cls))
        assert "iter_budgets" in dir(cls)


async def test_a_retried_create_after_an_update_returns_the_budget_as_it_is_now(control: Control) -> None:
    admin = control.admin
    reseller = await control.new_manager(admin)
    first = await control.create(admin, reseller.name, COST, MONTHLY, 100, request_id="r-upd")
    control.clock.now = T0 + timedelta(minutes=1)
    await control.update(admin, first.name, 200, "limit")
    again = await control.create(admin, reseller.name, COST, MONTHLY, 100, request_id="r-upd")
    assert (again.name, again.limit) == (first.name, 200)
    error = await rpc_error(control.create(admin, reseller.name, COST, DAILY, 100, request_id="r-upd"))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")
