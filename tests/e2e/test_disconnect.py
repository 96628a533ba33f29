"""A client that goes away mid-stream still leaves exactly one, correctly marked, usage row."""

from __future__ import annotations

import httpx

from claudeopus.v1 import usage_pb2
from tests.support import admin
from tests.support.processes import Gateway


def test_client_disconnect_mid_stream_is_settled_as_estimated(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    body = {"model": "fake-slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 60, "stream": True}
    received = 0
    with httpx.stream(
        "POST",
        f"{gateway.edge_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 3:
                break
    # Leaving the block closes the connection long before the 60 chunks (3 s) are done.
    [record] = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_CLIENT_DISCONNECTED
    assert record.source == usage_pb2.USAGE_SOURCE_ESTIMATED
    assert 3 <= record.output_tokens < 60, "bill what was produced: never zero, never the whole reservation"
    assert record.latency.ToMilliseconds() < 2500


def test_complete_stream_after_a_disconnect_still_works(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    body = {"model": "fake-1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    [record] = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_SUCCEEDED
