"""A control database with a root admin and a small account tree, for tests that call the domain directly.

No gRPC: the tests call ``claudeopus.control.domain`` inside ``open_database`` with an injected
time (``NOW``) and check the rows and counters left behind. tests/control/conftest.py serves the
pieces as the fixtures ``db``, ``root`` and ``world``.

Every :func:`authorize` reserves 11 input and 22 output tokens (33 in total) unless told
otherwise, and every :func:`settle` reports 5 input and 7 output tokens (12 in total).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from claudeopus import keys
from claudeopus.control.domain import accounts, api_keys, budget_owners, budgets, gateway
from claudeopus.control.domain.accounts import Bootstrapped
from claudeopus.control.domain.api_keys import IssuedKey
from claudeopus.control.domain.errors import DomainError, Reason, ResourceExhausted
from claudeopus.control.domain.periods import period_index
from claudeopus.control.domain.principal import Principal, authenticate_management
from claudeopus.control.models import (
    Account,
    Budget,
    BudgetCounter,
    BudgetMetric,
    BudgetPeriod,
    Role,
    Scope,
    UsageRecord,
    UsageSource,
    UsageStatus,
)
from tests.support.prices import serve_free

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(seconds=3)
IN, OUT = 11, 22  # what every authorize reserves unless told otherwise
RESERVED = IN + OUT
MAX_AGE = timedelta(minutes=15)

TOTAL_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS, COST = (
    BudgetMetric.TOTAL_TOKENS,
    BudgetMetric.INPUT_TOKENS,
    BudgetMetric.OUTPUT_TOKENS,
    BudgetMetric.COST_MICROS,
)
TOTAL, DAILY, MONTHLY = BudgetPeriod.TOTAL, BudgetPeriod.DAILY, BudgetPeriod.MONTHLY


# -- the world -----------------------------------------------------------------


@dataclass
class Root:
    boot: Bootstrapped
    principal: Principal

    @property
    def account(self) -> Account:
        return self.boot.account


async def new_root() -> Root:
    """Bootstrap the root admin, with the test models free on its account (only priced models are served)."""
    boot = await accounts.bootstrap_admin("root@example.com", "Root", peer_is_local=True)
    await serve_free(boot.account.id)
    return Root(boot=boot, principal=await authenticate_management(boot.key.secret, NOW))


@dataclass
class World:
    """root > reseller > user (key, other_key) and sibling (sibling_key); root > direct (direct_key).

    The reseller has an inference key of its own too (reseller_key).
    """

    root: Root
    reseller: Account
    user: Account
    sibling: Account
    direct: Account
    key: IssuedKey
    other_key: IssuedKey
    sibling_key: IssuedKey
    reseller_key: IssuedKey
    direct_key: IssuedKey

    @property
    def admin(self) -> Principal:
        return self.root.principal


async def new_account(
    principal: Principal, email: str, role: Role = Role.USER, parent: Account | None = None
) -> Account:
    return await accounts.create_account(
        principal,
        parent_id=None if parent is None else parent.id,
        email=email,
        display_name="",
        role=role,
        request_id="",
    )


async def new_key(
    owner: Principal,
    account: Account,
    *,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    request_id: str = "",
    scopes: list[int] | None = None,
) -> IssuedKey:
    """An inference key (unless ``scopes`` say otherwise) on ``account``, created by ``owner`` at NOW."""
    return await api_keys.create_api_key(
        owner,
        account=account,
        display_name="k",
        scopes=[Scope.INFERENCE] if scopes is None else scopes,
        allowed_models=allowed_models or [],
        expires_at=expires_at,
        request_id=request_id,
        now=NOW,
    )


async def new_world(root: Root) -> World:
    """The accounts and keys :class:`World` describes, created by the root admin."""
    admin = root.principal
    reseller = await new_account(admin, "reseller@example.com", Role.RESELLER)
    user = await new_account(admin, "user@example.com", parent=reseller)
    sibling = await new_account(admin, "sibling@example.com", parent=reseller)
    direct = await new_account(admin, "direct@example.com")
    return World(
        root=root,
        reseller=reseller,
        user=user,
        sibling=sibling,
        direct=direct,
        key=await new_key(admin, user),
        other_key=await new_key(admin, user),
        sibling_key=await new_key(admin, sibling),
        reseller_key=await new_key(admin, reseller),
        direct_key=await new_key(admin, direct),
    )


async def fails(error: type[DomainError], reason: Reason, call: Awaitable[object]) -> DomainError:
    """Await ``call``; it must raise exactly ``error`` carrying ``reason``."""
    with pytest.raises(error) as caught:
        await call
    assert type(caught.value) is error
    assert caught.value.reason is reason, caught.value
    return caught.value


async def exhausted(call: Awaitable[object]) -> ResourceExhausted:
    error = await fails(ResourceExhausted, Reason.BUDGET_EXHAUSTED, call)
    assert isinstance(error, ResourceExhausted)
    return error


async def set_budget(
    world: World,
    account: Account,
    limit: int,
    *,
    key: IssuedKey | None = None,
    metric: BudgetMetric = TOTAL_TOKENS,
    period: BudgetPeriod = TOTAL,
    now: datetime = NOW,
) -> Budget:
    """A budget set by the admin on ``account`` (or on its ``key``)."""
    view = await budgets.create_budget(
        world.admin,
        owner=budget_owners.Owner(account, None if key is None else key.key.id),
        metric=metric,
        period=period,
        limit=limit,
        request_id="",
        now=now,
    )
    return view.budget


async def authorize(
    key: IssuedKey,
    *,
    input_tokens: int = IN,
    max_output_tokens: int = OUT,
    model: str = "m-1",
    now: datetime = NOW,
    request_id: str | None = None,
    policy: gateway.OutputPolicy = gateway.OutputPolicy(),  # noqa: B008 - frozen
) -> gateway.Authorized:
    return await gateway.authorize(
        request_id=request_id or str(uuid.uuid4()),
        key_hash=keys.hash_secret_bytes(key.secret),
        model=model,
        estimated_input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        stream=True,
        now=now,
        policy=policy,
    )


def settle_input(
    request_id: object, *, input_tokens: int = 5, output_tokens: int = 7, **changes: int
) -> gateway.SettleInput:
    values = {
        "request_id": str(request_id),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "latency_us": 1234,
        "status": UsageStatus.SUCCEEDED,
        "source": UsageSource.REPORTED,
        "http_status": 200,
    }
    values.update(changes)
    return gateway.SettleInput(**values)  # type: ignore[arg-type]


async def settle(
    authorized: gateway.Authorized, *, input_tokens: int = 5, output_tokens: int = 7, now: datetime = LATER
) -> gateway.Settlement:
    data = settle_input(authorized.record.request_id, input_tokens=input_tokens, output_tokens=output_tokens)
    return await gateway.settle(data, now)


async def counter(budget: Budget, at: datetime = NOW) -> tuple[int, int]:
    """(spent, reserved) of ``budget`` in the period of ``at``; (0, 0) when it has no counter there."""
    row = await BudgetCounter.get_or_none(budget_id=budget.id, period_index=period_index(budget.period, at))
    return (0, 0) if row is None else (row.spent, row.reserved)


def of(metric: BudgetMetric, input_tokens: int, output_tokens: int, cost_micros: int) -> int:
    return {
        INPUT_TOKENS: input_tokens,
        OUTPUT_TOKENS: output_tokens,
        TOTAL_TOKENS: input_tokens + output_tokens,
        COST: cost_micros,
    }[metric]


async def expected_counters() -> dict[tuple[int, int], tuple[int, int]]:
    """What every budget's counters must hold, recomputed from the usage rows alone.

    A row counts in a budget when it is the budget's key's (key budget) or in the
    subtree of the budget's account (account budget), in the period of the
    row's ``created_at``: closed rows in ``spent`` at their charged amounts,
    open ones in ``reserved`` at their reserved amounts.
    """
    rows = await UsageRecord.all().select_related("account")
    expected: dict[tuple[int, int], tuple[int, int]] = {}
    for budget in await Budget.all().select_related("account"):
        for row in rows:
            if budget.api_key_id is not None:  # type: ignore[attr-defined]
                covered = row.api_key_id == budget.api_key_id  # type: ignore[attr-defined]
            else:
                covered = row.account.path.startswith(budget.account.path)
            if not covered:
                continue
            where = (budget.id, period_index(budget.period, row.created_at))
            spent, reserved = expected.get(where, (0, 0))
            if row.status is UsageStatus.RESERVED:
                reserved += of(
                    budget.metric, row.estimated_input_tokens, row.max_output_tokens, row.reserved_cost_micros
                )
            else:
                spent += of(budget.metric, row.input_tokens, row.output_tokens, row.cost_micros)
            expected[where] = (spent, reserved)
    return {where: value for where, value in expected.items() if value != (0, 0)}


async def assert_counters_match_rows() -> None:
    """Every counter equals the sum of the usage rows it covers, for every metric and period."""
    actual = {
        (c.budget_id, c.period_index): (c.spent, c.reserved)  # type: ignore[attr-defined]
        for c in await BudgetCounter.all()
        if (c.spent, c.reserved) != (0, 0)
    }
    assert actual == await expected_counters()
