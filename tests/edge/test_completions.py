from __future__ import annotations

import orjson
import pytest

from claudeopus.edge.completions import parse_completion
from claudeopus.edge.errors import BadRequest

MESSAGES = [{"role": "user", "content": "secret prompt text"}]


def body(**fields: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": MESSAGES, **fields})


def test_the_body_is_forwarded_with_every_field_and_value_unchanged() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi\\n"}], "max_tokens": 7, '
    raw += b'"temperature": 0.10, "seed": -3, "logit_bias": {"50256": -100}, "x-vendor": [null, true, 1e2]}'
    request = parse_completion(raw)
    assert orjson.loads(request.upstream_body) == orjson.loads(raw)
    assert list(orjson.loads(request.upstream_body)) == list(orjson.loads(raw)), "in the client's order"
    assert (request.model, request.stream, request.max_output_tokens, request.choices) == ("m", False, 7, 1)
    assert "hi" not in repr(request)


ESCAPED = {
    "model": b'"mod\\u0065l"',
    "max_tokens": b'"max_t\\u006fkens"',
    "max_completion_tokens": b'"max_completion_t\\u006fkens"',
    "n": b'"\\u006e"',
}
VALUES = {"model": (b'"cheap"', b'"dear"'), "max_tokens": (b"5", b"100000"), "n": (b"1", b"8")}
VALUES["max_completion_tokens"] = VALUES["max_tokens"]


@pytest.mark.parametrize("name", sorted(ESCAPED))
@pytest.mark.parametrize("escaped_first", [True, False])
def test_a_key_written_twice_or_escaped_reaches_the_upstream_once_as_authorized(name: str, escaped_first: bool) -> None:
    """An upstream that keeps the first of two keys must still get what was authorized and billed."""
    plain = b'"' + name.encode() + b'"'
    first, second = (ESCAPED[name], plain) if escaped_first else (plain, ESCAPED[name])
    one, other = VALUES[name]
    raw = b'{%s: %s, "model": "m", "messages": [{"role": "user", "content": "hi"}], %s: %s}' % (
        first,
        one,
        second,
        other,
    )
    if name == "model":
        raw = raw.replace(b'"model": "m", ', b"")
    request = parse_completion(raw)
    forwarded = request.upstream_body
    assert forwarded.count(plain) == 1 and b"\\u00" not in forwarded
    value = orjson.loads(forwarded)[name]
    authorized = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "max_completion_tokens": request.max_output_tokens,
        "n": request.choices,
    }
    assert value == authorized[name] == orjson.loads(other)


@pytest.mark.parametrize(
    ("fields", "choices"), [({}, 1), ({"n": 3}, 3), ({"best_of": 4, "n": 2}, 4), ({"n": None}, 1), ({"n": 8}, 8)]
)
def test_choices_are_the_larger_of_n_and_best_of(fields: dict[str, object], choices: int) -> None:
    request = parse_completion(body(max_tokens=10, **fields))
    assert (request.choices, request.reserved_output_tokens) == (choices, 10 * choices)


@pytest.mark.parametrize("name", ["n", "best_of"])
@pytest.mark.parametrize("value", [0, 9, 128, -1, 2.0, "2", True, 10**30])
def test_a_multiplier_above_the_limit_or_not_a_count_is_refused(name: str, value: object) -> None:
    raw = body(**{name: value}) if value != 10**30 else body()[:-1] + b',"%s":%d}' % (name.encode(), value)
    with pytest.raises(BadRequest) as caught:
        parse_completion(raw, max_choices=8)
    assert (caught.value.param, caught.value.status) == (name, 400)
    assert caught.value.message == f"'{name}' must be an integer from 1 to 8."
    assert parse_completion(body(**{name: 20}), max_choices=20).choices == 20


def test_streams_always_ask_the_upstream_for_usage() -> None:
    request = parse_completion(body(stream=True, stream_options={"other": 1}))
    forwarded = orjson.loads(request.upstream_body)
    assert forwarded["stream_options"] == {"other": 1, "include_usage": True}
    assert not request.include_usage


def test_client_include_usage_is_remembered() -> None:
    request = parse_completion(body(stream=True, stream_options={"include_usage": True}))
    assert request.include_usage


def test_with_both_limits_the_larger_is_reserved() -> None:
    """An upstream may honour either one: the reservation must hold the larger."""
    assert parse_completion(body(max_tokens=5, max_completion_tokens=9)).max_output_tokens == 9
    assert parse_completion(body(max_tokens=90, max_completion_tokens=9)).max_output_tokens == 90


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


def test_output_cap_is_added_keeping_the_clients_fields() -> None:
    from claudeopus.edge.completions import with_output_cap

    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.10, "n": 2}  '
    capped = with_output_cap(parse_completion(raw), 4096, "max_completion_tokens")
    assert orjson.loads(capped.upstream_body) == {**orjson.loads(raw), "max_completion_tokens": 4096}
    assert (capped.choices, capped.reserved_output_tokens) == (2, 8192), "the cap is per choice"
    assert orjson.loads(capped.upstream_body)["max_completion_tokens"] == 4096
    assert capped.max_output_tokens == 4096
    streamed = parse_completion(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}')
    both = orjson.loads(with_output_cap(streamed, 9, "max_tokens").upstream_body)
    assert both["max_tokens"] == 9 and both["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_a_repeated_output_limit_reaches_the_upstream_once(name: str) -> None:
    raw = f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "{name}": 100000, "{name}": 5}}'
    request = parse_completion(raw.encode())
    assert request.upstream_body.count(name.encode()) == 1
    assert orjson.loads(request.upstream_body)[name] == request.max_output_tokens == 5


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
def test_a_body_too_deep_to_be_written_again_is_refused_before_authorize(limit: bytes) -> None:
    """orjson reads 1024 levels but writes 254: such a body is refused before anything is reserved."""
    from claudeopus.edge.completions import with_output_cap

    deep = b"[" * 300 + b"]" * 300
    for raw in (
        b'{"model": "m", "messages": [{"content": %s}], %s}' % (deep, limit),
        b'{"model": "m", "messages": [{"content": %s}]}' % deep,
    ):
        with pytest.raises(BadRequest) as caught:
            parse_completion(raw)
        assert caught.value.code == "invalid_json"
    shallow = parse_completion(b'{"model": "m", "messages": [{"content": [[1]]}], %s}' % limit)
    assert orjson.loads(with_output_cap(shallow, 5, "max_tokens").upstream_body)["max_tokens"] == 5
