from __future__ import annotations

import orjson
import pytest

from claudeopus.edge.completions import parse_completion
from claudeopus.edge.errors import BadRequest

MESSAGES = [{"role": "user", "content": "secret prompt text"}]


def body(**fields: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": MESSAGES, **fields})


def test_non_streaming_body_is_forwarded_byte_for_byte() -> None:
    raw = body(max_tokens=7)
    request = parse_completion(raw)
    assert request.upstream_body is raw
    assert (request.model, request.stream, request.max_output_tokens) == ("m", False, 7)


def test_streams_always_ask_the_upstream_for_usage() -> None:
    request = parse_completion(body(stream=True, stream_options={"other": 1}))
    forwarded = orjson.loads(request.upstream_body)
    assert forwarded["stream_options"] == {"other": 1, "include_usage": True}
    assert not request.include_usage


def test_client_include_usage_is_remembered() -> None:
    request = parse_completion(body(stream=True, stream_options={"include_usage": True}))
    assert request.include_usage


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse_completion(body(max_tokens=5, max_completion_tokens=9)).max_output_tokens == 9


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"[]", None),
        (b"\xff\xfe", None),
        (orjson.dumps({"messages": MESSAGES}), "model"),
        (orjson.dumps({"model": "", "messages": MESSAGES}), "model"),
        (orjson.dumps({"model": "m" * 201, "messages": MESSAGES}), "model"),
        (orjson.dumps({"model": "m"}), "messages"),
        (orjson.dumps({"model": "m", "messages": ["x"]}), "messages[0]"),
        (body(stream=1), "stream"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    ],
)
def test_bad_requests_name_the_parameter(raw: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_completion(raw)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_errors_never_quote_message_content() -> None:
    raw = orjson.dumps({"model": 5, "messages": MESSAGES})
    with pytest.raises(BadRequest) as caught:
        parse_completion(raw)
    assert "secret prompt text" not in caught.value.json().decode()


def test_the_input_bound_is_the_body_length_and_the_estimate_a_quarter_of_it() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 400 + b'"}]}'
    request = parse_completion(raw)
    assert request.input_token_bound == len(raw)
    assert request.estimated_input_tokens == len(raw) // 4 + 1


def test_output_cap_is_spliced_in_keeping_the_clients_bytes() -> None:
    from claudeopus.edge.completions import with_output_cap

    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.10}  '
    capped = with_output_cap(parse_completion(raw), 4096, "max_completion_tokens")
    assert capped.upstream_body == raw.rstrip()[:-1] + b',"max_completion_tokens":4096}'
    assert orjson.loads(capped.upstream_body)["max_completion_tokens"] == 4096
    assert capped.max_output_tokens == 4096
    streamed = parse_completion(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}')
    both = orjson.loads(with_output_cap(streamed, 9, "max_tokens").upstream_body)
    assert both["max_tokens"] == 9 and both["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_a_repeated_output_limit_is_refused(name: str) -> None:
    raw = f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "{name}": 100000, "{name}": 5}}'
    with pytest.raises(BadRequest) as caught:
        parse_completion(raw.encode())
    assert caught.value.param == name


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_an_output_cap_replaces_null_limits_instead_of_repeating_them(field: str) -> None:
    from claudeopus.edge.completions import with_output_cap

    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": null, '
    raw += b'"max_completion_tokens": null, "stream": true}'
    capped = with_output_cap(parse_completion(raw), 7, field).upstream_body
    assert capped.count(b'"max_') == 1
    assert orjson.loads(capped)[field] == 7
    assert orjson.loads(capped)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("limit", [b'"max_tokens": null', b'"messages2": [{"max_completion_tokens": 1}]'])
def test_a_body_an_output_cap_would_have_to_rewrite_but_cannot_is_refused_before_authorize(limit: bytes) -> None:
    """orjson reads 1024 levels but writes 254: such a body would fail after authorize, with its reservation held."""
    from claudeopus.edge.completions import with_output_cap

    deep = b"[" * 300 + b"]" * 300
    with pytest.raises(BadRequest) as caught:
        parse_completion(b'{"model": "m", "messages": [{"content": %s}], %s}' % (deep, limit))
    assert caught.value.code == "invalid_json"
    spliced = parse_completion(b'{"model": "m", "messages": [{"content": %s}]}' % deep)
    assert with_output_cap(spliced, 5, "max_tokens").upstream_body.endswith(b',"max_tokens":5}')
    shallow = parse_completion(b'{"model": "m", "messages": [{"content": [[1]]}], %s}' % limit)
    assert orjson.loads(with_output_cap(shallow, 5, "max_tokens").upstream_body)["max_tokens"] == 5
