"""``claudeopus admin budgets`` end to end: the real console script against real control and edge processes."""

from __future__ import annotations

import re
import secrets
from typing import Any

import openai

from tests.support import admin as support
from tests.support.cli import Result, run_cli
from tests.support.processes import Gateway


def _admin(gateway: Gateway, *args: str, key: str | None = None) -> Result:
    """``claudeopus admin ARGS --control ... --key ...``, by default with the bootstrapped admin key."""
    return run_cli(["admin", *args, "--control", gateway.control_target, "--key", key or gateway.admin_key])


def _account(gateway: Gateway, role: str = "reseller", parent: str = "") -> dict[str, Any]:
    email = f"budget-{secrets.token_hex(4)}@example.com"
    args = ["accounts", "create", "--email", email, "--role", role, "--json"]
    return _admin(gateway, *args, *(["--parent", parent] if parent else [])).ok().json()


def _json_error(result: Result) -> dict[str, Any]:
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    payload = result.json()
    assert set(payload) == {"error"}, result.describe()
    return payload["error"]


def test_budgets_create_get_list_update_delete_json(gateway: Gateway) -> None:
    reseller = _account(gateway)
    created = _admin(
        gateway,
        "budgets",
        "create",
        "--owner",
        reseller["name"],
        "--metric",
        "cost_micros",
        "--period",
        "monthly",
        "--limit",
        "5000000",
        "--json",
    ).ok()
    budget = created.json()
    assert re.fullmatch(r"budgets/\d+", budget["name"]), budget
    assert (budget["owner"], budget["set_by"]) == (reseller["name"], "accounts/1")
    assert (budget["metric"], budget["period"]) == ("BUDGET_METRIC_COST_MICROS", "BUDGET_PERIOD_MONTHLY")
    assert (budget["limit"], budget["spent"], budget["reserved"], budget["remaining"]) == (5_000_000, 0, 0, 5_000_000)
    assert budget["period_start_time"].endswith("-01T00:00:00Z") and budget["period_end_time"], budget

    assert _admin(gateway, "budgets", "get", budget["name"], "--json").ok().json() == budget
    listed = _admin(gateway, "budgets", "list", "--owner", reseller["name"], "--json").ok().json()
    assert listed == {"budgets": [budget]}

    # A limit of 0 is a change like any other (the client always sends the update mask).
    changed = _admin(gateway, "budgets", "update", budget["name"], "--limit", "0", "--json").ok().json()
    assert (changed["limit"], changed["remaining"], changed["name"]) == (0, 0, budget["name"])

    assert _admin(gateway, "budgets", "delete", budget["name"], "--json").ok().json() == {"deleted": budget["name"]}
    gone = _json_error(_admin(gateway, "budgets", "get", budget["name"], "--json"))
    assert (gone["code"], gone["reason"]) == ("NOT_FOUND", "RESOURCE_NOT_FOUND")
    assert _admin(gateway, "budgets", "list", "--owner", reseller["name"], "--json").ok().json() == {"budgets": []}


def test_budgets_list_prints_a_table_by_default(gateway: Gateway) -> None:
    reseller = _account(gateway)
    key = _admin(gateway, "keys", "create", "--account", reseller["name"], "--json").ok().json()["api_key"]["name"]
    daily = _admin(
        gateway, "budgets", "create", "--owner", key, "--metric", "input_tokens", "--period", "daily", "--limit", "77"
    ).ok()
    assert "budget" in daily.stdout and key in daily.stdout
    total_args = ["--owner", key, "--metric", "total_tokens", "--period", "total", "--limit", "99", "--json"]
    total = _admin(gateway, "budgets", "create", *total_args).ok().json()

    table = _admin(gateway, "budgets", "list", "--owner", key).ok().stdout
    header = ["name", "owner", "metric", "period", "limit", "spent", "reserved", "remaining", "period_end_time"]
    assert all(column in table for column in header), table
    assert total["name"] in table and "input_tokens" in table and "daily" in table and "total_tokens" in table
    assert "BUDGET_METRIC" not in table and "BUDGET_PERIOD" not in table, table
    assert "77" in table and "99" in table


def test_budget_errors_are_reported_like_every_admin_command(gateway: Gateway) -> None:
    reseller = _account(gateway)
    reseller_key = _admin(gateway, "keys", "create", "--account", reseller["name"], "--scope", "management", "--json")
    reseller_secret = reseller_key.ok().json()["secret"]
    user = _account(gateway, "user", parent=reseller["name"])
    cap = ["--metric", "total_tokens", "--period", "daily"]

    own = _json_error(_admin(gateway, "budgets", "create", "--owner", "accounts/1", *cap, "--limit", "5", "--json"))
    assert (own["code"], own["reason"]) == ("PERMISSION_DENIED", "SELF_CHANGE_DENIED")

    _admin(gateway, "budgets", "create", "--owner", reseller["name"], *cap, "--limit", "100").ok()
    above = _admin(gateway, "budgets", "create", "--owner", user["name"], *cap, "--limit", "101", key=reseller_secret)
    assert above.returncode == 1 and "Traceback" not in above.stderr, above.describe()
    assert "FAILED_PRECONDITION" in above.stderr and "BUDGET_ABOVE_PARENT" in above.stderr, above.describe()

    retry = ["--owner", user["name"], *cap, "--limit", "50", "--request-id", "cli-1", "--json"]
    first = _admin(gateway, "budgets", "create", *retry, key=reseller_secret).ok().json()
    assert _admin(gateway, "budgets", "create", *retry, key=reseller_secret).ok().json()["name"] == first["name"]

    unknown = ["--owner", user["name"], "--metric", "dollars", "--period", "daily", "--limit", "5"]
    bad = _admin(gateway, "budgets", "create", *unknown)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.describe()
    assert "--metric" in bad.stderr and "cost_micros" in bad.stderr, bad.describe()
    negative = _admin(gateway, "budgets", "update", first["name"], "--limit", "-1")
    assert negative.returncode == 2 and "Traceback" not in negative.stderr, negative.describe()


def test_a_key_budget_starts_with_what_the_key_spent_through_the_edge(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    client = openai.OpenAI(base_url=gateway.edge_url, api_key=secret, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage is not None
    support.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)

    args = ["--owner", key_name, "--metric", "total_tokens", "--period", "daily", "--limit", "100000", "--json"]
    budget = _admin(gateway, "budgets", "create", *args).ok().json()
    assert budget["spent"] == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert budget["remaining"] == 100_000 - budget["spent"]
