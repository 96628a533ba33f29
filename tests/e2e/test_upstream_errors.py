"""Upstream errors reach the client in OpenAI's shape, never with the upstream's credentials or account."""

from __future__ import annotations

import httpx
import pytest

from claudeopus.v1 import usage_pb2
from tests.support import admin
from tests.support.processes import UPSTREAM_KEY, Gateway

LEAKS = (UPSTREAM_KEY, "sk-ups****Z123", "org-SeCrEtOrG123")


def _post(gateway: Gateway, secret: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "prompt-text"}], "stream": stream}
    return httpx.post(
        f"{gateway.edge_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


def _settled(gateway: Gateway, key_name: str) -> usage_pb2.UsageRecord:
    [record] = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert (record.input_tokens, record.output_tokens) == (0, 0)
    return record


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_pass_through_redacted(gateway: Gateway, status: int, stream: bool) -> None:
    key_name, secret = gateway.new_user_key()
    response = _post(gateway, secret, f"fake-status-{status}", stream)
    assert response.status_code == status
    assert all(leak not in response.text for leak in LEAKS)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("upstream_type", "messages", "upstream_code")
    assert "upstream refused" in error["message"] and "[redacted]" in error["message"]
    assert response.headers["x-request-id"]
    assert _settled(gateway, key_name).http_status == status


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fake-status-401", 502, "upstream_auth_failed"),
        ("fake-status-403", 502, "upstream_auth_failed"),
        ("fake-status-500", 502, "upstream_error"),
        ("fake-status-503", 502, "upstream_error"),
        ("fake-status-429", 429, "upstream_rate_limited"),
        ("fake-status-429-quota", 503, "upstream_quota_exhausted"),
    ],
)
def test_upstream_account_problems_are_told_in_the_gateways_words(
    gateway: Gateway, model: str, status: int, code: str
) -> None:
    key_name, secret = gateway.new_user_key()
    response = _post(gateway, secret, model)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert "upstream refused" not in response.text
    assert all(leak not in response.text for leak in LEAKS)
    assert response.headers["x-request-id"]
    assert _settled(gateway, key_name).http_status == status
