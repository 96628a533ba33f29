"""The isolation matrix: five principals, each trying every call on every other's resources.

Principals form the tree admin → {reseller A → sub-reseller A → user, reseller B}.
A caller may see and change exactly its own subtree. Outside it, every call must
answer exactly as it does for a resource that does not exist: same code, reason
and message, so nothing leaks, not even existence.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from claudeopus.client import ClaudeOpusError, Client
from tests.support.processes import Gateway

PRINCIPALS = ("admin", "reseller_a", "reseller_b", "sub_a", "user")
START = datetime.now(UTC) - timedelta(days=1)
MISSING_ACCOUNT = "accounts/999999999"
MISSING_KEY = "apiKeys/999999999"
MISSING_BUDGET = "budgets/999999999"


@dataclass
class Member:
    name: str
    account: str
    path_parent: str | None
    role: str
    management_secret: str
    key: str  # an inference key owned by the member: the target of key operations
    budget: str  # a budget the admin set on that key: the target of budget operations


@pytest.fixture(scope="module")
def tree(gateway: Gateway) -> dict[str, Member]:
    members: dict[str, Member] = {}
    with Client(gateway.control_target, key=gateway.admin_key) as admin:
        root = next(admin.iter_api_keys()).account  # the admin's own keys live on the root account

        def member(name: str, role: str, parent: str | None) -> None:
            if parent is None:
                account, secret = root, gateway.admin_key
            else:
                email = f"{name}-{secrets.token_hex(3)}@example.com"
                account = admin.create_account(email=email, role=role, parent=parent).name
                secret = admin.create_api_key(parent=account, scopes=["management"]).secret
            key = admin.create_api_key(parent=account, display_name="target").api_key.name
            budget = admin.create_budget(key, metric="total_tokens", period="monthly", limit=10**9).name
            members[name] = Member(name, account, parent, role, secret, key, budget)

        member("admin", "admin", None)
        member("reseller_a", "reseller", root)
        member("reseller_b", "reseller", root)
        member("sub_a", "reseller", members["reseller_a"].account)
        member("user", "user", members["sub_a"].account)
    return members


# Who is in whose subtree (the tree built by the fixture, written out by hand on purpose).
SUBTREE = {
    "admin": set(PRINCIPALS),
    "reseller_a": {"reseller_a", "sub_a", "user"},
    "reseller_b": {"reseller_b"},
    "sub_a": {"sub_a", "user"},
    "user": {"user"},
}


@dataclass(frozen=True)
class Target:
    account: str
    key: str
    budget: str


Operation = Callable[[Client, Target], Any]

READS_AND_SAFE_WRITES: dict[str, Operation] = {
    "get_account": lambda c, t: c.get_account(t.account),
    "list_accounts": lambda c, t: c.list_accounts(parent=t.account),
    "update_account": lambda c, t: c.update_account(t.account, display_name="same"),
    "list_api_keys": lambda c, t: c.list_api_keys(parent=t.account),
    "get_api_key": lambda c, t: c.get_api_key(t.key),
    "update_api_key": lambda c, t: c.update_api_key(t.key, display_name="target"),
    "create_api_key": lambda c, t: c.create_api_key(parent=t.account, display_name="made by matrix"),
    "list_usage_records": lambda c, t: c.list_usage_records(parent=t.account),
    "list_usage_of_account": lambda c, t: c.list_usage_records(account=t.account),
    "summarize_usage": lambda c, t: c.summarize_usage(parent=t.account, start_time=START, group_by=["model"]),
    "get_budget": lambda c, t: c.get_budget(t.budget),
    "list_budgets_of_key": lambda c, t: c.list_budgets(parent=t.key),
    "list_budgets_of_account": lambda c, t: c.list_budgets(parent=t.account),
}
DESTRUCTIVE: dict[str, Operation] = {
    "suspend_account": lambda c, t: c.suspend_account(t.account),
    "resume_account": lambda c, t: c.resume_account(t.account),
    "delete_account": lambda c, t: c.delete_account(t.account),
    "set_password": lambda c, t: c.set_password("a long enough password", name=t.account),
    "set_account_policy": lambda c, t: c.set_account_policy(t.account, allowed_models=["matrix-model"]),
    "revoke_api_key": lambda c, t: c.revoke_api_key(t.key),
    "rotate_api_key": lambda c, t: c.rotate_api_key(t.key),
    "create_account": lambda c, t: c.create_account(email=f"m-{secrets.token_hex(3)}@example.com", parent=t.account),
    "create_key_budget": lambda c, t: c.create_budget(t.key, metric="input_tokens", period="daily", limit=5),
    "create_account_budget": lambda c, t: c.create_budget(t.account, metric="cost_micros", period="total", limit=5),
    "update_budget": lambda c, t: c.update_budget(t.budget, limit=7),
    "delete_budget": lambda c, t: c.delete_budget(t.budget),
}


def _outcome(call: Callable[[], Any]) -> tuple[str, str, str]:
    try:
        call()
    except ClaudeOpusError as error:
        return error.code.name, error.reason, error.message
    return "OK", "", ""


def cells() -> Iterator[tuple[str, str, str]]:
    """Every call on every other's resources; inside a subtree only the non-destructive ones
    (destructive calls inside the subtree are covered by the per-method tests)."""
    for caller in PRINCIPALS:
        for target in PRINCIPALS:
            inside = target in SUBTREE[caller]
            for operation in (*READS_AND_SAFE_WRITES, *(() if inside else DESTRUCTIVE)):
                yield caller, target, operation


MATRIX = list(cells())


@pytest.mark.parametrize(("caller", "target", "operation"), MATRIX)
def test_isolation(gateway: Gateway, tree: dict[str, Member], caller: str, target: str, operation: str) -> None:
    me, them = tree[caller], tree[target]
    do = {**READS_AND_SAFE_WRITES, **DESTRUCTIVE}[operation]
    with Client(gateway.control_target, key=me.management_secret) as client:
        if target not in SUBTREE[caller]:
            seen = _outcome(lambda: do(client, Target(them.account, them.key, them.budget)))
            missing = _outcome(lambda: do(client, Target(MISSING_ACCOUNT, MISSING_KEY, MISSING_BUDGET)))
            assert seen == missing, "a resource outside the subtree must look exactly like a missing one"
            assert seen[0] in (grpc.StatusCode.NOT_FOUND.name, grpc.StatusCode.PERMISSION_DENIED.name)
            if seen[0] == grpc.StatusCode.PERMISSION_DENIED.name:
                assert (me.role, seen[1]) == ("user", "ROLE_DENIED"), "only a user's own role may refuse first"
            return
        outcome = _outcome(lambda: do(client, Target(them.account, them.key, them.budget)))
        assert outcome[0] == "OK", outcome
