"""The admin CLI's account, key, usage and price commands, against real processes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import openai
import pytest

from tests.support.cli import Result, clean_env, run_cli
from tests.support.processes import Gateway


def admin(gateway: Gateway, *args: str, key: str | None = None, env: dict[str, str] | None = None) -> Result:
    return run_cli(
        ["admin", *args, "--control", gateway.control_target, "--key", key or gateway.admin_key],
        env=clean_env(env),
    )


def ask(gateway: Gateway, secret: str) -> str:
    client = openai.OpenAI(base_url=gateway.edge_url, api_key=secret, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    return reply.choices[0].message.content or ""


def email(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def test_accounts_list_update_suspend_resume_delete(gateway: Gateway) -> None:
    reseller = admin(gateway, "accounts", "create", "--email", email("r"), "--role", "reseller", "--json").ok().json()
    user = admin(gateway, "accounts", "create", "--email", email("u"), "--parent", reseller["name"], "--json")
    user = user.ok().json()

    children = admin(gateway, "accounts", "list", "--parent", reseller["name"], "--json").ok().json()["accounts"]
    assert [a["name"] for a in children] == [user["name"]]
    assert (
        admin(gateway, "accounts", "list", "--parent", reseller["name"], "--role", "reseller", "--json")
        .ok()
        .json()["accounts"]
        == []
    )

    renamed = admin(gateway, "accounts", "update", user["name"], "--name", "Ann", "--json").ok().json()
    assert renamed["display_name"] == "Ann"

    suspended = admin(gateway, "accounts", "suspend", reseller["name"], "--json").ok().json()
    assert suspended["state"] == "ACCOUNT_STATE_SUSPENDED"
    assert admin(gateway, "accounts", "resume", reseller["name"], "--json").ok().json()["state"] == (
        "ACCOUNT_STATE_ACTIVE"
    )

    refused = admin(gateway, "accounts", "delete", reseller["name"], "--json")
    assert refused.returncode == 1 and refused.json()["error"]["reason"] == "ACCOUNT_NOT_EMPTY"
    admin(gateway, "accounts", "delete", user["name"]).ok()
    gone = admin(gateway, "accounts", "get", user["name"], "--json")
    assert gone.returncode == 1 and gone.json()["error"]["code"] == "NOT_FOUND"


def test_password_login_and_a_session_token_as_the_credential(gateway: Gateway) -> None:
    address = email("p")
    account = admin(gateway, "accounts", "create", "--email", address, "--role", "reseller", "--json").ok().json()
    password = "correct horse battery staple"
    admin(gateway, "accounts", "set-password", account["name"], env={"CLAUDEOPUS_PASSWORD": password}).ok()

    login = run_cli(
        ["admin", "login", "--email", address, "--control", gateway.control_target, "--json"],
        env=clean_env({"CLAUDEOPUS_PASSWORD": password}),
    ).ok()
    token = login.json()["session_token"]
    assert token.startswith("co-session-")
    me = admin(gateway, "accounts", "get", account["name"], "--json", key=token).ok().json()
    assert me["email"] == address

    wrong = run_cli(
        ["admin", "login", "--email", address, "--control", gateway.control_target, "--json"],
        env=clean_env({"CLAUDEOPUS_PASSWORD": "wrong password, long enough"}),
    )
    assert wrong.returncode == 1 and wrong.json()["error"]["reason"] == "LOGIN_FAILED"
    assert password not in login.stdout + login.stderr

    # Changing one's own password needs the current one (prompted, never echoed; here from the environment).
    new = "a brand new passphrase"
    refused = admin(
        gateway,
        "accounts",
        "set-password",
        "--current",
        "--json",
        key=token,
        env={"CLAUDEOPUS_PASSWORD": new, "CLAUDEOPUS_CURRENT_PASSWORD": "not the password at all"},
    )
    assert refused.returncode == 1 and refused.json()["error"]["reason"] == "CURRENT_PASSWORD_INVALID"
    admin(
        gateway,
        "accounts",
        "set-password",
        key=token,
        env={"CLAUDEOPUS_PASSWORD": new, "CLAUDEOPUS_CURRENT_PASSWORD": password},
    ).ok()
    ended = admin(gateway, "accounts", "get", account["name"], "--json", key=token)
    assert ended.returncode == 1 and ended.json()["error"]["reason"] == "SESSION_INVALID"

    # Logout ends the session it is given.
    again = run_cli(
        ["admin", "login", "--email", address, "--control", gateway.control_target, "--json"],
        env=clean_env({"CLAUDEOPUS_PASSWORD": new}),
    ).ok()
    session = again.json()["session_token"]
    assert "logged out" in admin(gateway, "logout", key=session).ok().stdout
    gone = admin(gateway, "accounts", "get", account["name"], "--json", key=session)
    assert gone.returncode == 1 and gone.json()["error"]["reason"] == "SESSION_INVALID"


def test_keys_list_update_and_rotate_with_grace(gateway: Gateway) -> None:
    user = admin(gateway, "accounts", "create", "--email", email("k"), "--json").ok().json()
    created = admin(gateway, "keys", "create", "--account", user["name"], "--json").ok().json()
    name, old = created["api_key"]["name"], created["secret"]

    listed = admin(gateway, "keys", "list", "--account", user["name"], "--json").ok().json()["api_keys"]
    assert [k["name"] for k in listed] == [name]

    limited = admin(gateway, "keys", "update", name, "--model", "other-model", "--json").ok().json()
    assert limited["allowed_models"] == ["other-model"]
    with pytest.raises(openai.PermissionDeniedError):
        ask(gateway, old)
    admin(gateway, "keys", "update", name, "--all-models").ok()
    assert ask(gateway, old)

    rotated = admin(gateway, "keys", "rotate", name, "--grace", "3600", "--json").ok().json()
    new = rotated["secret"]
    assert new != old and rotated["api_key"]["previous_secret_expire_time"]
    assert ask(gateway, old) and ask(gateway, new)

    human = admin(gateway, "keys", "rotate", name).ok()
    assert human.stdout.count("secret (shown once): sk-co-") == 1
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, new)


def test_usage_summary_by_model(gateway: Gateway) -> None:
    user = admin(gateway, "accounts", "create", "--email", email("s"), "--json").ok().json()
    secret = admin(gateway, "keys", "create", "--account", user["name"], "--json").ok().json()["secret"]
    for _ in range(3):
        ask(gateway, secret)
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[dict[str, object]] = []
    for _ in range(50):  # settles follow the replies
        summary = admin(
            gateway, "usage", "summary", "--by", "model", "--parent", user["name"], "--since", since, "--json"
        )
        rows = summary.ok().json()["summaries"]
        if rows and rows[0]["requests"] == 3:
            break
    assert len(rows) == 1 and rows[0]["model"] == "fake-1" and rows[0]["requests"] == 3
    assert rows[0]["output_tokens"] == 6
    table = admin(gateway, "usage", "summary", "--by", "model", "--parent", user["name"], "--since", since).ok()
    assert "fake-1" in table.stdout and "requests" in table.stdout


def test_prices_markup_and_cost_of_a_request(gateway: Gateway) -> None:
    model = f"priced-{secrets.token_hex(3)}"
    reseller = admin(gateway, "accounts", "create", "--email", email("pr"), "--role", "reseller", "--json").ok().json()
    user = admin(gateway, "accounts", "create", "--email", email("pu"), "--parent", reseller["name"], "--json")
    user = user.ok().json()
    base = admin(gateway, "prices", "create", "--model", model, "--input", "1000000", "--output", "2000000", "--json")
    base = base.ok().json()
    assert base["model"] == model and base["input_micros_per_million"] == 1_000_000

    below = admin(
        gateway, "prices", "create", "--model", model, "--account", reseller["name"], "--input", "10", "--output", "10"
    )
    assert below.returncode == 1 and "PRICE_BELOW_PARENT" in below.stderr
    markup = admin(
        gateway,
        "prices",
        "create",
        "--model",
        model,
        "--account",
        reseller["name"],
        "--input",
        "3000000",
        "--output",
        "4000000",
        "--json",
    ).ok()
    listed = admin(gateway, "prices", "list", "--account", reseller["name"], "--json").ok().json()["prices"]
    assert [p["name"] for p in listed] == [markup.json()["name"]]

    resolved = admin(gateway, "prices", "resolve", "--model", model, "--account", user["name"], "--json").ok().json()
    assert resolved["priced"] is True
    assert (resolved["input_micros_per_million"], resolved["output_micros_per_million"]) == (3_000_000, 4_000_000)
    # The root admin has nothing above it: every price is its own source, nothing is inherited.
    assert [p["name"] for p in resolved["sources"]] == [base["name"], markup.json()["name"]]
    assert "inherited" not in resolved
    shown = admin(gateway, "prices", "resolve", "--model", model, "--account", user["name"]).ok().stdout
    assert "inherited (set above you)" in shown and base["name"] in shown

    created = admin(gateway, "keys", "create", "--account", user["name"], "--json").ok().json()
    client = openai.OpenAI(base_url=gateway.edge_url, api_key=created["secret"], max_retries=0, timeout=30)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=4)
    assert reply.usage is not None
    expected = -(-(reply.usage.prompt_tokens * 3_000_000 + reply.usage.completion_tokens * 4_000_000) // 1_000_000)
    for _ in range(50):
        records = admin(gateway, "usage", "list", "--api-key", created["api_key"]["name"], "--json").ok().json()
        rows = [r for r in records["usage_records"] if r["status"] != "USAGE_STATUS_RESERVED"]
        if rows:
            break
    assert rows[0]["cost_micros"] == expected
