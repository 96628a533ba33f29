from __future__ import annotations

import orjson
import pytest

from claudeopus.edge.sse import EventBuffer, Usage, event_data, parse_usage


def test_buffer_returns_only_whole_events_in_order() -> None:
    buffer = EventBuffer()
    assert buffer.feed(b'data: {"a": 1}\n\ndata: {"b') == [b'data: {"a": 1}\n\n']
    assert buffer.feed(b'": 2}\n\n') == [b'data: {"b": 2}\n\n']
    assert buffer.feed(b"data: [DONE]\n\n") == [b"data: [DONE]\n\n"]
    assert buffer.rest() == b""


def test_buffer_accepts_crlf_framing_and_keeps_a_tail() -> None:
    buffer = EventBuffer()
    assert buffer.feed(b"data: 1\r\n\r\ndata: 2\n\ndata: 3") == [b"data: 1\r\n\r\n", b"data: 2\n\n"]
    assert buffer.rest() == b"data: 3"


def test_byte_at_a_time_feeding_gives_the_same_events() -> None:
    stream = b'data: {"x": 1}\n\n: comment\n\ndata: [DONE]\n\n'
    buffer = EventBuffer()
    events = [event for byte in stream for event in buffer.feed(bytes([byte]))]
    assert b"".join(events) == stream
    assert len(events) == 3


def test_usage_is_read_into_token_counts() -> None:
    assert parse_usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == Usage(3, 4)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        [],
        {"prompt_tokens": 1},
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
    ],
)
def test_malformed_usage_is_ignored(usage: object) -> None:
    assert parse_usage(usage) is None


def test_event_data_joins_data_lines_and_ignores_every_other_line() -> None:
    assert event_data(b': comment\nevent: x\nid: 7\ndata: {"a":\r\ndata:1}\n\n') == b'{"a":\n1}'
    assert event_data(b": keep-alive\n\n") == b""


def test_generated_text_length_counts_content_reasoning_refusal_and_tool_arguments() -> None:
    from claudeopus.edge.sse import generated_text_length

    delta = {
        "content": "héllo",
        "reasoning_content": "abc",
        "refusal": None,
        "tool_calls": [{"function": {"arguments": '{"a":1}'}}, {"function": {}}, "junk"],
    }
    event = b"data: " + orjson.dumps({"choices": [{"delta": delta}, {"delta": {"content": "xy"}}]}) + b"\n\n"
    assert generated_text_length(event) == 5 + 3 + 7 + 2
    assert generated_text_length(b"data: not json\n\n") == 0
    assert generated_text_length(b'data: {"choices": "nope"}\n\n') == 0
    assert generated_text_length(b'data: {"choices": [{"delta": {"content": 5}}]}\n\n') == 0
