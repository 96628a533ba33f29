"""One completion end to end: the official openai SDK → edge → control → fake upstream → usage row."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from claudeopus.v1 import usage_pb2
from tests.support import admin
from tests.support.databases import dump_text
from tests.support.fake_upstream import UNPRICED_MODEL
from tests.support.processes import UPSTREAM_KEY, Gateway


def _client(gateway: Gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.edge_url, api_key=secret, max_retries=0, timeout=30)


def _canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


def _settled(gateway: Gateway, key_name: str, count: int) -> list[usage_pb2.UsageRecord]:
    records = admin.wait_for_settled(gateway.control_target, gateway.admin_key, key_name, count)
    assert len(records) == count
    return records


def _assert_private(gateway: Gateway, *secrets: str) -> None:
    dump = dump_text(gateway.database_url)
    logs = gateway.logs()
    for secret in secrets:
        assert secret not in dump, "content or secret reached the database"
        assert secret not in logs, "content or secret reached a log"


def test_non_streaming_completion_records_reported_usage(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    canary = _canary()
    reply = _client(gateway, secret).chat.completions.create(
        model="fake-1", messages=[{"role": "user", "content": canary}], max_tokens=5
    )
    assert reply.choices[0].message.content.startswith(f"echo:{canary}")
    assert reply.usage is not None and reply.usage.completion_tokens == 5

    [record] = _settled(gateway, key_name, 1)
    assert record.status == usage_pb2.USAGE_STATUS_SUCCEEDED
    assert record.source == usage_pb2.USAGE_SOURCE_REPORTED
    assert (record.input_tokens, record.output_tokens) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert record.model == "fake-1" and record.http_status == 200
    assert record.latency.ToNanoseconds() > 0
    _assert_private(gateway, canary, secret)


def test_streaming_without_include_usage_hides_the_usage_chunk_but_bills_it(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    canary = _canary()
    stream = _client(gateway, secret).chat.completions.create(
        model="fake-1", messages=[{"role": "user", "content": canary}], max_tokens=4, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(f"echo:{canary}")
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach a client that did not ask for it"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    forwarded = gateway.upstream.received[-1].body
    assert forwarded is not None and forwarded["stream_options"] == {"include_usage": True}

    [record] = _settled(gateway, key_name, 1)
    expected = gateway.upstream.usage_log[-1]
    assert record.source == usage_pb2.USAGE_SOURCE_REPORTED
    assert record.status == usage_pb2.USAGE_STATUS_SUCCEEDED
    assert (record.input_tokens, record.output_tokens) == (expected["prompt_tokens"], expected["completion_tokens"])
    _assert_private(gateway, canary, secret)


def test_streaming_with_include_usage_passes_the_usage_chunk(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    stream = _client(gateway, secret).chat.completions.create(
        model="fake-1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    [record] = _settled(gateway, key_name, 1)
    assert (record.input_tokens, record.output_tokens) == (
        usage_chunks[0].usage.prompt_tokens,
        usage_chunks[0].usage.completion_tokens,
    )


def test_sse_framing_is_relayed_verbatim_with_done(gateway: Gateway) -> None:
    _, secret = gateway.new_user_key()
    body = {"model": "fake-1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.edge_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_raw())
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in events)


def test_upstream_gets_its_own_key_never_the_clients(gateway: Gateway) -> None:
    _, secret = gateway.new_user_key()
    _client(gateway, secret).chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    headers = gateway.upstream.received[-1].headers
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert secret not in str(headers)


def test_unknown_key_is_401_without_upstream_call(gateway: Gateway) -> None:
    before = len(gateway.upstream.received)
    fake = "sk-co-" + "A" * 43
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(gateway, fake).chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_api_key"
    assert set(error) == {"message", "type", "param", "code"}
    assert len(gateway.upstream.received) == before


def test_missing_and_malformed_keys_are_401(gateway: Gateway) -> None:
    url = f"{gateway.edge_url}/chat/completions"
    body = {"model": "fake-1", "messages": [{"role": "user", "content": "x"}]}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    garbage = httpx.post(url, json=body, headers={"Authorization": "Bearer not-a-key"})
    assert garbage.status_code == 401 and garbage.json()["error"]["code"] == "invalid_api_key"


def test_revoked_key_is_401_at_once(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    client = _client(gateway, secret)
    client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    admin.call(gateway.control_target, gateway.admin_key, lambda c: c.revoke_api_key(key_name))
    before = len(gateway.upstream.received)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "api_key_revoked"
    assert len(gateway.upstream.received) == before
    assert len(_settled(gateway, key_name, 1)) == 1


def test_models_lists_upstream_models_for_a_valid_key(gateway: Gateway) -> None:
    _, secret = gateway.new_user_key()
    models = _client(gateway, secret).models.list()
    assert [m.id for m in models.data] == ["fake-1"]
    listed = httpx.get(f"{gateway.edge_url}/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    model = {"id": "fake-1", "object": "model", "created": 1700000000, "owned_by": "claudeopus"}
    assert listed.json()["data"] == [model]
    assert "org-operator-secret" not in listed.text, "nothing of the upstream's own object but id and created"


def test_an_unpriced_model_is_403_model_not_available_and_not_listed(gateway: Gateway) -> None:
    key_name, secret = gateway.new_user_key()
    client = _client(gateway, secret)
    before = len(gateway.upstream.received)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=UNPRICED_MODEL, messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["code"], caught.value.body["param"]) == ("model_not_available", "model")
    assert len(gateway.upstream.received) == before, "nothing was forwarded"
    # The upstream lists it too; the key is shown only what it may use.
    assert [m.id for m in client.models.list().data] == ["fake-1"]

    # An explicit zero price serves it.
    price = admin.call(
        gateway.control_target,
        gateway.admin_key,
        lambda c: c.create_price(model=UNPRICED_MODEL, input_micros=0, output_micros=0),
    )
    try:
        reply = client.chat.completions.create(model=UNPRICED_MODEL, messages=[{"role": "user", "content": "x"}])
        assert reply.choices[0].message.content
        assert [m.id for m in client.models.list().data] == ["fake-1", UNPRICED_MODEL]
        [record] = _settled(gateway, key_name, 1)
        assert (record.model, record.cost_micros) == (UNPRICED_MODEL, 0)
    finally:
        admin.call(gateway.control_target, gateway.admin_key, lambda c: c.delete_price(price.name))


def test_model_allow_list_is_enforced(gateway: Gateway) -> None:
    _, secret = gateway.new_user_key(allowed_models=["other-model"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _client(gateway, secret).chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_allowed"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "fake-1"}', "messages"),
        (b'{"model": "fake-1", "messages": []}', "messages"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "fake-1", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "fake-1", "messages": [{"role": "user"}], "max_tokens": -1}', "max_tokens"),
    ],
)
def test_bad_bodies_are_400_in_openai_shape(gateway: Gateway, payload: bytes, param: str | None) -> None:
    _, secret = gateway.new_user_key()
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions",
        content=payload,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_route_is_openai_404(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.edge_url}/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_malformed_key_is_refused_before_the_body_is_read(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions", content=b"{not json", headers={"Authorization": "Bearer x"}
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/chat/completions", "POST"), ("PUT", "/models", "GET")])
def test_wrong_method_is_405_with_allow(gateway: Gateway, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, f"{gateway.edge_url}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b'{"model": "fake-1", "messages": [{"role": "user"}], "max_tokens": 9223372036854775808}', "max_tokens"),
        (b'{"model": "fake-1", "messages": [{"role": "user"}], "n": 9}', "n"),
    ],
)
def test_values_that_would_break_the_contract_are_400(gateway: Gateway, payload: bytes, param: str) -> None:
    _, secret = gateway.new_user_key()
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions",
        content=payload,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_stream_request_body_keeps_the_clients_values(gateway: Gateway) -> None:
    _, secret = gateway.new_user_key()
    raw = b'{"model": "fake-1", "messages": [{"role": "user", "content": "x"}], "stream": true, "temperature": 0.5}'
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    forwarded = gateway.upstream.received[-1].body
    assert forwarded is not None and forwarded["temperature"] == 0.5
    assert forwarded["stream_options"] == {"include_usage": True}
