"""Upstream errors reach the client in OpenAI's shape, never with the upstream's credentials."""

from __future__ import annotations

import httpx
import pytest

from claudeopus.v1 import usage_pb2
from tests.conftest import UPSTREAM_KEY, Gateway
from tests.support import admin


def _post(gateway: Gateway, secret: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "prompt-text"}], "stream": stream}
    return httpx.post(
        f"{gateway.edge_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [400, 422, 429])
def test_client_errors_pass_through_with_the_upstream_key_redacted(gateway: Gateway, status: int, stream: bool) -> None:
    key_name, secret = gateway.new_user_key()
    response = _post(gateway, secret, f"fake-status-{status}", stream)
    assert response.status_code == status
    assert UPSTREAM_KEY not in response.text and "[redacted]" in response.text
    assert "error" in response.json()
    [record] = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert (record.input_tokens, record.output_tokens, record.http_status) == (0, 0, status)


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "upstream_auth_failed"), (403, "upstream_auth_failed"), (500, "upstream_error"), (503, "upstream_error")],
)
def test_upstream_failures_become_502_without_upstream_text(gateway: Gateway, status: int, code: str) -> None:
    key_name, secret = gateway.new_user_key()
    response = _post(gateway, secret, f"fake-status-{status}")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "server_error"
    assert "upstream refused" not in response.text and UPSTREAM_KEY not in response.text
    [record] = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR and record.http_status == 502
