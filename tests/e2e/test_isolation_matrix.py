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
from tests.conftest import Gateway

PRINCIPALS = ("admin", "reseller_a", "reseller_b", "sub_a", "user")
START = datetime.now(UTC) - timedelta(days=1)
MISSING_ACCOUNT = "accounts/999999999"
MISSING_KEY = "apiKeys/999999999"


@dataclass
class Member:
    name: str
    account: str
    path_parent: str | None
    role: str
    management_secret: str
    key: str  # an inference key owned by the member: the target of key operations


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
            members[name] = Member(name, account, parent, role, secret, key)

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


Operation = Callable[[Client, str, str], Any]  # (client, target account, target key)

READS_AND_SAFE_WRITES: dict[str, Operation] = {
    "get_account": lambda c, a, k: c.get_account(a),
    "list_accounts": lambda c, a, k: c.list_accounts(parent=a),
    "update_account": lambda c, a, k: c.update_account(a, display_name="same"),
    "list_api_keys": lambda c, a, k: c.list_api_keys(parent=a),
    "get_api_key": lambda c, a, k: c.get_api_key(k),
    "update_api_key": lambda c, a, k: c.update_api_key(k, display_name="target"),
    "create_api_key": lambda c, a, k: c.create_api_key(parent=a, display_name="made by matrix"),
    "list_usage_records": lambda c, a, k: c.list_usage_records(parent=a),
    "list_usage_of_account": lambda c, a, k: c.list_usage_records(account=a),
    "summarize_usage": lambda c, a, k: c.summarize_usage(parent=a, start_time=START, group_by=["model"]),
}
DESTRUCTIVE: dict[str, Operation] = {
    "suspend_account": lambda c, a, k: c.suspend_account(a),
    "resume_account": lambda c, a, k: c.resume_account(a),
    "delete_account": lambda c, a, k: c.delete_account(a),
    "set_password": lambda c, a, k: c.set_password("a long enough password", name=a),
    "revoke_api_key": lambda c, a, k: c.revoke_api_key(k),
    "rotate_api_key": lambda c, a, k: c.rotate_api_key(k),
    "create_account": lambda c, a, k: c.create_account(email=f"m-{secrets.token_hex(3)}@example.com", parent=a),
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
            seen = _outcome(lambda: do(client, them.account, them.key))
            missing = _outcome(lambda: do(client, MISSING_ACCOUNT, MISSING_KEY))
            assert seen == missing, "a resource outside the subtree must look exactly like a missing one"
            assert seen[0] in (grpc.StatusCode.NOT_FOUND.name, grpc.StatusCode.PERMISSION_DENIED.name)
            if seen[0] == grpc.StatusCode.PERMISSION_DENIED.name:
                assert (me.role, seen[1]) == ("user", "ROLE_DENIED"), "only a user's own role may refuse first"
            return
        outcome = _outcome(lambda: do(client, them.account, them.key))
        assert outcome[0] == "OK", outcome
