"""``claudeopus admin`` end to end: the real console script against real control and edge processes."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.cli import SECRET_PATTERN, Result, run_cli
from tests.support.databases import fresh_database
from tests.support.processes import Gateway, free_port, start_control


def _admin(gateway: Gateway, *args: str) -> Result:
    """``claudeopus admin ARGS --control ... --key ...`` with the bootstrapped admin key."""
    return run_cli(["admin", *args, "--control", gateway.control_target, "--key", gateway.admin_key])


def _email(tag: str = "cli") -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def _openai(gateway: Gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.edge_url, api_key=secret, max_retries=0, timeout=30)


def _assert_clean_failure(result: Result) -> None:
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert "Traceback" not in result.stdout, result.describe()


def _json_error(result: Result) -> dict[str, Any]:
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    payload = result.json()
    assert set(payload) == {"error"}, result.describe()
    error = payload["error"]
    assert set(error) == {"code", "reason", "message", "field_violations"}, result.describe()
    return error


def _create_account(gateway: Gateway, role: str = "user") -> dict[str, Any]:
    return _admin(gateway, "accounts", "create", "--email", _email(role), "--role", role, "--json").ok().json()


def _settled_usage(gateway: Gateway, key_name: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll ``usage list --json`` until ``count`` records of ``key_name`` are settled (settles follow the reply)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _admin(gateway, "usage", "list", "--json").ok().json()["usage_records"]
        mine = [r for r in rows if r["api_key"] == key_name]
        settled = [r for r in mine if r["status"] != "USAGE_STATUS_RESERVED"]
        if len(settled) >= count or time.monotonic() > deadline:
            assert len(settled) == count, f"expected {count} settled records of {key_name}, got {mine}"
            return settled
        time.sleep(0.1)


def test_accounts_create_json_returns_the_reseller(gateway: Gateway) -> None:
    email = _email("reseller")
    account = _admin(gateway, "accounts", "create", "--email", email, "--role", "reseller", "--json").ok().json()
    assert re.fullmatch(r"accounts/\d+", account["name"]), account
    assert account["role"] == "ROLE_RESELLER"
    assert account["email"] == email
    assert account["state"] == "ACCOUNT_STATE_ACTIVE"
    assert account["parent"] == "accounts/1", "default parent is the caller's (root admin's) account"


def test_key_lifecycle_create_use_bill_revoke(gateway: Gateway) -> None:
    account = _create_account(gateway)
    created = _admin(gateway, "keys", "create", "--account", account["name"], "--name", "x", "--json").ok().json()
    assert set(created) == {"api_key", "secret"}
    secret, key = created["secret"], created["api_key"]
    assert re.fullmatch(SECRET_PATTERN, secret), secret
    assert re.fullmatch(r"apiKeys/\d+", key["name"]), key
    assert key["account"] == account["name"]
    assert key["display_name"] == "x"
    assert key["scopes"] == ["SCOPE_INFERENCE"]
    assert secret.startswith(key["prefix"])
    assert secret not in str(key), "the stored key must not carry the secret"

    client = _openai(gateway, secret)
    reply = client.chat.completions.create(
        model="fake-1", messages=[{"role": "user", "content": "hello from the cli test"}], max_tokens=3
    )
    assert reply.choices[0].message.content.startswith("echo:hello from the cli test")
    assert reply.usage is not None

    [record] = _settled_usage(gateway, key["name"], 1)
    assert record["account"] == account["name"]
    assert record["model"] == "fake-1"
    assert record["status"] == "USAGE_STATUS_SUCCEEDED"
    assert record["source"] == "USAGE_SOURCE_REPORTED"
    assert record["input_tokens"] == reply.usage.prompt_tokens
    assert record["output_tokens"] == reply.usage.completion_tokens == 3
    assert record["http_status"] == 200

    filtered = _admin(gateway, "usage", "list", "--api-key", key["name"], "--json").ok().json()["usage_records"]
    assert [r["request_id"] for r in filtered] == [record["request_id"]]

    revoked = _admin(gateway, "keys", "revoke", key["name"], "--json").ok().json()
    assert revoked["name"] == key["name"]
    assert revoked.get("revoke_time"), revoked
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "api_key_revoked"


def test_environment_variables_replace_the_flags(gateway: Gateway) -> None:
    email = _email("env")
    env = {"CLAUDEOPUS_CONTROL": gateway.control_target, "CLAUDEOPUS_ADMIN_KEY": gateway.admin_key}
    result = run_cli(["admin", "accounts", "create", "--email", email, "--role", "reseller", "--json"], env=env).ok()
    account = result.json()
    assert account["email"] == email and account["role"] == "ROLE_RESELLER"
    # The same call with the variables but a wrong key proves the variable really is the key used.
    wrong = {**env, "CLAUDEOPUS_ADMIN_KEY": "sk-co-" + "A" * 43}
    refused = run_cli(["admin", "accounts", "create", "--email", _email("env"), "--json"], env=wrong)
    assert _json_error(refused)["reason"] == "KEY_INVALID"


def test_keys_create_human_output_prints_the_secret_once(gateway: Gateway) -> None:
    account = _create_account(gateway)
    result = _admin(gateway, "keys", "create", "--account", account["name"], "--name", "laptop").ok()
    secrets_seen = re.findall(r"sk-co-[A-Za-z0-9_-]{43,}", result.stdout)
    assert len(secrets_seen) == 1, result.describe()
    [secret] = secrets_seen
    assert f"secret (shown once): {secret}" in result.stdout
    assert "laptop" in result.stdout and account["name"] in result.stdout
    assert secret not in result.stderr
    # The printed secret is a live key.
    models = _openai(gateway, secret).models.list()
    assert [m.id for m in models.data] == ["fake-1"]


def test_bootstrap_is_refused_once_an_admin_exists(gateway: Gateway) -> None:
    as_json = run_cli(["admin", "bootstrap", "--email", _email("root"), "--control", gateway.control_target, "--json"])
    error = _json_error(as_json)
    assert error["reason"] == "ADMIN_EXISTS"
    assert error["code"] == "ALREADY_EXISTS"
    assert error["message"]
    assert "sk-co-" not in as_json.stdout

    human = run_cli(["admin", "bootstrap", "--email", _email("root"), "--control", gateway.control_target])
    assert human.returncode == 1, human.describe()
    _assert_clean_failure(human)
    assert "ADMIN_EXISTS" in human.stderr
    assert "sk-co-" not in human.stdout + human.stderr


def test_a_fresh_control_bootstraps_only_with_its_token_file(tmp_path: Path) -> None:
    """Another local process racing the operator to BootstrapAdmin gets nothing without the 0600 token file."""
    with fresh_database(tmp_path) as url:
        control, port = start_control(url, secrets.token_urlsafe(32), tmp_path, "control-fresh")
        try:
            target = f"127.0.0.1:{port}"
            token_file = tmp_path / "claudeopus-bootstrap.token"
            assert token_file.stat().st_mode & 0o777 == 0o600
            token = token_file.read_text().strip()
            assert str(token_file) in control.output() and token not in control.output()
            for guess in ([], ["--token", "co-bootstrap-" + "A" * 43]):
                racer = run_cli(
                    ["admin", "bootstrap", "--email", "me@example.com", "--control", target, "--json", *guess]
                )
                assert racer.returncode == 1, racer.describe()
                assert _json_error(racer)["reason"] == "BOOTSTRAP_TOKEN_INVALID"
            done = run_cli(
                [
                    "admin",
                    "bootstrap",
                    "--email",
                    "root@example.com",
                    "--control",
                    target,
                    "--token-file",
                    str(token_file),
                ]
            ).ok()
            assert "management key (shown once): sk-co-" in done.stdout
            assert not token_file.exists()
        finally:
            control.stop()


def test_bad_email_is_field_invalid(gateway: Gateway) -> None:
    as_json = _admin(gateway, "accounts", "create", "--email", "not-an-email", "--json")
    error = _json_error(as_json)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["reason"] == "FIELD_INVALID"
    assert set(error["field_violations"]) == {"account.email"}, error
    assert error["field_violations"]["account.email"]

    human = _admin(gateway, "accounts", "create", "--email", "not-an-email")
    assert human.returncode == 1, human.describe()
    _assert_clean_failure(human)
    assert "FIELD_INVALID" in human.stderr and "account.email" in human.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "create", "--email", "nobody@example.com"],
        ["keys", "create", "--name", "x"],
        ["keys", "revoke", "apiKeys/1"],
        ["usage", "list"],
    ],
    ids=["accounts-create", "keys-create", "keys-revoke", "usage-list"],
)
def test_missing_key_is_a_clear_usage_error(gateway: Gateway, args: list[str]) -> None:
    result = run_cli(["admin", *args, "--control", gateway.control_target, "--json"])
    _assert_clean_failure(result)
    assert "--key" in result.stderr and "CLAUDEOPUS_ADMIN_KEY" in result.stderr, result.describe()
    assert result.stdout == "", "no partial result on stdout"


def test_inference_key_is_refused_for_management(gateway: Gateway) -> None:
    _, inference_secret = gateway.new_user_key()
    result = run_cli(
        ["admin", "usage", "list", "--control", gateway.control_target, "--key", inference_secret, "--json"]
    )
    error = _json_error(result)
    assert error["code"] == "PERMISSION_DENIED" and error["reason"] == "KEY_SCOPE_DENIED"


def test_revoking_an_unknown_key_is_not_found(gateway: Gateway) -> None:
    error = _json_error(_admin(gateway, "keys", "revoke", "apiKeys/987654321", "--json"))
    assert error["code"] == "NOT_FOUND" and error["reason"] == "RESOURCE_NOT_FOUND"


def test_unreachable_control_plane_is_a_clean_error() -> None:
    dead = f"127.0.0.1:{free_port()}"
    as_json = run_cli(["admin", "usage", "list", "--control", dead, "--key", "sk-co-" + "A" * 43, "--json"])
    assert _json_error(as_json)["code"] == "UNAVAILABLE"
    human = run_cli(["admin", "usage", "list", "--control", dead, "--key", "sk-co-" + "A" * 43])
    assert human.returncode == 1, human.describe()
    _assert_clean_failure(human)
    assert "UNAVAILABLE" in human.stderr


def test_usage_list_human_output_shows_the_record(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    _openai(gateway, secret).chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    [record] = _settled_usage(gateway, key_name, 1)
    result = _admin(gateway, "usage", "list", "--api-key", key_name).ok()
    assert "usage records" in result.stdout
    rows = [line for line in result.stdout.splitlines() if key_name in line]
    assert len(rows) == 1, result.stdout
    cells = [cell.strip() for cell in rows[0].strip("│ ").split("│")]
    assert len(cells) == 9, cells
    assert cells[2:6] == [key_name, "fake-1", str(record["input_tokens"]), str(record["output_tokens"])], cells


def test_usage_list_human_output_does_not_truncate_the_request_id(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    _openai(gateway, secret).chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    [record] = _settled_usage(gateway, key_name, 1)
    result = _admin(gateway, "usage", "list", "--api-key", key_name).ok()  # COLUMNS=120, see tests/support/cli.py
    assert record["request_id"] in result.stdout, result.stdout
    assert record["status"] in result.stdout, result.stdout


def test_accounts_policy_bounds_the_keys_created_below(gateway: Gateway) -> None:
    account = _create_account(gateway)
    updated = (
        _admin(
            gateway,
            "accounts",
            "policy",
            account["name"],
            "--allowed-models",
            "m-a,m-b",
            "--no-management-keys",
            "--max-key-lifetime",
            "30d",
            "--json",
        )
        .ok()
        .json()
    )
    assert updated["policy"] == {
        "allowed_models": ["m-a", "m-b"],
        "deny_management_keys": True,
        "max_key_lifetime": "2592000s",
    }, updated
    # An unrestricted key (no expiry) and a management key are refused with the policy's reason.
    refused = _admin(gateway, "keys", "create", "--account", account["name"], "--json")
    assert _json_error(refused)["reason"] == "ACCOUNT_POLICY_DENIED"
    soon = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 86_400))
    refused = _admin(
        gateway, "keys", "create", "--account", account["name"], "--scope", "management", "--expires", soon, "--json"
    )
    assert _json_error(refused)["reason"] == "ACCOUNT_POLICY_DENIED"
    made = _admin(gateway, "keys", "create", "--account", account["name"], "--expires", soon, "--json").ok().json()
    assert made["api_key"]["allowed_models"] == ["m-a", "m-b"]
    # Bad durations are a usage error, not a traceback.
    _assert_clean_failure(_admin(gateway, "accounts", "policy", account["name"], "--max-key-lifetime", "soon"))
