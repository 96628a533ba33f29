"""StreamRelay against an in-memory upstream: what reaches the client, and what is settled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from claudeopus.edge.completions import parse_completion
from claudeopus.edge.disconnect import DisconnectWatcher
from claudeopus.edge.redaction import FALLBACK, Redactor
from claudeopus.edge.relay import KEEP_ALIVE, StreamRelay
from claudeopus.edge.upstream import ConnectionBroken
from claudeopus.v1 import usage_pb2

USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}'


def chunk(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": text}}]}) + b"\n\n"


class RecordingTicket:
    """A ticket that keeps what it was settled with."""

    def __init__(self) -> None:
        self.settled: list[Any] = []

    def settle(self, outcome: Any) -> None:
        self.settled.append(outcome)


class Upstream:
    """An in-memory ``UpstreamResponse``: a 200 event stream of ``parts`` (an exception part is raised)."""

    status_code = 200
    content_type = "text/event-stream"

    def __init__(self, parts: list[bytes | BaseException], pause: float = 0.0) -> None:
        self.parts = parts
        self.pause = pause
        self.closed = False

    async def aread(self) -> bytes:
        raise AssertionError("a stream is never read whole")

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if self.pause:
                await asyncio.sleep(self.pause)
            if isinstance(part, BaseException):
                raise part
            yield part

    async def aclose(self) -> None:
        self.closed = True


async def relay(
    parts: list[bytes | BaseException],
    *,
    include_usage: bool = False,
    pause: float = 0.0,
    deadline: float = 0.0,
    redactor: Redactor | None = None,
    **fields: object,
):
    upstream = Upstream(parts, pause)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, **fields}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    settler = RecordingTicket()
    relayed = StreamRelay(
        response=upstream,
        completion=parse_completion(orjson.dumps(body)),
        ticket=settler,  # type: ignore[arg-type]
        watcher=DisconnectWatcher(None),
        deadline=deadline or float("inf"),
        redactor=redactor,
    )
    return relayed, settler, upstream


async def collect(relayed: StreamRelay) -> list[bytes]:
    return [event async for event in relayed.events()]


async def test_usage_chunk_is_billed_and_hidden_when_not_asked_for() -> None:
    relayed, settler, upstream = await relay([chunk("a"), chunk("b"), USAGE + b"\n\n", b"data: [DONE]\n\n"])
    events = await collect(relayed)
    assert events == [chunk("a"), chunk("b"), b"data: [DONE]\n\n"]
    [outcome] = settler.settled
    assert (outcome.input_tokens, outcome.output_tokens) == (11, 2)
    assert outcome.source == usage_pb2.USAGE_SOURCE_REPORTED
    assert outcome.status == usage_pb2.USAGE_STATUS_SUCCEEDED
    assert upstream.closed


async def test_usage_chunk_passes_when_asked_for() -> None:
    relayed, settler, _ = await relay([chunk("a"), USAGE + b"\n\n"], include_usage=True)
    assert await collect(relayed) == [chunk("a"), USAGE + b"\n\n"]
    assert settler.settled[0].output_tokens == 2


async def test_an_unterminated_final_event_goes_through_the_same_checks() -> None:
    relayed, settler, _ = await relay([chunk("a"), USAGE])
    assert await collect(relayed) == [chunk("a")]
    assert settler.settled[0].source == usage_pb2.USAGE_SOURCE_REPORTED


async def test_events_split_across_reads_are_reassembled() -> None:
    whole = chunk("hello") + chunk("world") + b"data: [DONE]\n\n"
    relayed, _, _ = await relay([whole[:7], whole[7:30], whole[30:]])
    assert await collect(relayed) == [chunk("hello"), chunk("world"), b"data: [DONE]\n\n"]


async def test_upstream_failure_mid_stream_ends_with_an_error_event_and_an_estimate() -> None:
    relayed, settler, upstream = await relay([chunk("a"), chunk("b"), ConnectionBroken("ClientOSError")])
    events = await collect(relayed)
    assert events[:2] == [chunk("a"), chunk("b")]
    error = orjson.loads(events[2].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_error"
    [outcome] = settler.settled
    assert outcome.status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert outcome.source == usage_pb2.USAGE_SOURCE_ESTIMATED
    assert outcome.output_tokens == 2
    assert upstream.closed


UPSTREAM_KEY = "upstream-credential-XYZ"
LEAKS = (UPSTREAM_KEY, "sk-ups****Z123", "org-SeCrEtOrG123", "proj_hidden", "sk-proj-abc123", "extra-field")


@pytest.mark.parametrize(
    "error",
    [
        {
            "error": {
                "message": f"quota of org-SeCrEtOrG123 with {UPSTREAM_KEY} (sk-ups****Z123)",
                "type": "server_error",
                "param": "sk-proj-abc123",
                "code": "x",
                "org": "proj_hidden",
            },
            "extra": "extra-field",
        },
        {"object": "error", "message": f"bad key {UPSTREAM_KEY}", "type": "BadRequestError", "code": 400},
        {"error": f"upstream key {UPSTREAM_KEY} failed for org-SeCrEtOrG123"},
    ],
    ids=["openai", "flat", "string"],
)
async def test_an_error_event_from_the_upstream_reaches_the_client_redacted(error: dict[str, object]) -> None:
    event = b"data: " + orjson.dumps(error) + b"\n\n"
    relayed, settler, _ = await relay([chunk("a"), event, USAGE + b"\n\n"], redactor=Redactor(UPSTREAM_KEY))
    events = await collect(relayed)
    assert events[0] == chunk("a") and len(events) == 2
    assert all(leak.encode() not in events[1] for leak in LEAKS), events[1]
    shown = orjson.loads(events[1].removeprefix(b"data: "))["error"]
    assert set(shown) == {"message", "type", "param", "code"}
    assert "[redacted]" in shown["message"]
    assert settler.settled[0].output_tokens == 2


async def test_an_estimate_without_usage_is_capped_at_the_output_of_every_choice() -> None:
    words = [chunk("abcdefgh" * 5) for _ in range(30)]  # about 300 tokens of text
    relayed, settler, _ = await relay([*words, ConnectionBroken("reset")], max_tokens=20, n=3)
    await collect(relayed)
    assert settler.settled[0].output_tokens == 60, "three choices of at most 20 tokens each"


async def test_a_cancelled_relay_still_settles_once() -> None:
    relayed, settler, upstream = await relay([chunk(str(i)) for i in range(100)], pause=0.01)
    task = asyncio.ensure_future(collect(relayed))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [outcome] = settler.settled
    assert outcome.status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert 0 < outcome.output_tokens < 100
    assert upstream.closed


def error_code(event: bytes) -> str:
    return str(orjson.loads(event.removeprefix(b"data: "))["error"]["code"])


async def test_a_stream_ending_without_done_or_usage_ends_with_an_error_event() -> None:
    relayed, settler, _ = await relay([chunk("a"), chunk("b")])
    events = await collect(relayed)
    assert events[:2] == [chunk("a"), chunk("b")] and error_code(events[2]) == "upstream_error"
    [outcome] = settler.settled
    assert (outcome.status, outcome.output_tokens) == (usage_pb2.USAGE_STATUS_UPSTREAM_ERROR, 2)


async def test_an_event_that_is_not_json_is_not_relayed_and_ends_the_stream() -> None:
    relayed, settler, upstream = await relay([chunk("a"), b"data: {broken\n\n", chunk("b"), b"data: [DONE]\n\n"])
    events = await collect(relayed)
    assert events[0] == chunk("a") and len(events) == 2 and b"broken" not in events[1]
    assert error_code(events[1]) == "upstream_error"
    assert settler.settled[0].status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert upstream.closed


async def test_keep_alive_comments_become_the_gateways_own_and_count_as_no_output() -> None:
    relayed, settler, _ = await relay([b": keep-alive\n\n"] * 5 + [chunk("a"), b"data: [DONE]\n\n"])
    assert await collect(relayed) == [KEEP_ALIVE] * 5 + [chunk("a"), b"data: [DONE]\n\n"]
    [outcome] = settler.settled
    assert (outcome.status, outcome.output_tokens) == (usage_pb2.USAGE_STATUS_SUCCEEDED, 1)


SECRETS = (b"AcmeCorp99", b"SECRET123", b"sk-upstream")


def assert_nothing_upstream_leaks(events: list[bytes]) -> None:
    stream = b"".join(events)
    assert all(secret not in stream for secret in SECRETS), stream
    for event in events:
        # Only what the relay understood: a data line of JSON (or [DONE]), or its own keep-alive.
        assert event == KEEP_ALIVE or (event.startswith(b"data: ") and event.count(b"\n") == 2), event


async def test_upstream_comment_lines_are_never_relayed() -> None:
    comment = b": upstream org-AcmeCorp99 key sk-upstream-SECRET123\n"
    parts = [comment + b"\n", comment + chunk("a"), chunk("b") + comment, USAGE + b"\n\n", b"data: [DONE]\n\n"]
    relayed, settler, _ = await relay(parts)
    events = await collect(relayed)
    assert_nothing_upstream_leaks(events)
    assert events == [KEEP_ALIVE, chunk("a"), chunk("b"), b"data: [DONE]\n\n"]
    assert settler.settled[0].output_tokens == 2


async def test_event_and_id_fields_are_never_relayed() -> None:
    fields = b"event: org-AcmeCorp99\nid: org-AcmeCorp99\nretry: 1000\n"
    parts = [fields + chunk("a"), chunk("b").removesuffix(b"\n") + fields + b"\n", fields + b"\n", USAGE + b"\n\n"]
    relayed, _, _ = await relay(parts, include_usage=True)
    events = await collect(relayed)
    assert_nothing_upstream_leaks(events)
    assert events == [chunk("a"), chunk("b"), KEEP_ALIVE, USAGE + b"\n\n"]


@pytest.mark.parametrize(
    "payload",
    [
        {"error": ["sk-upstream-SECRET123"]},
        {"error": 42, "detail": "org-AcmeCorp99"},
        {"error": None, "choices": [{"delta": {"content": "org-AcmeCorp99"}}]},
        {"object": "error", "detail": "sk-upstream-SECRET123"},
    ],
    ids=["list", "number", "null", "flat-without-message"],
)
async def test_any_error_member_is_an_error_and_relayed_redacted(payload: dict[str, object]) -> None:
    event = b"data: " + orjson.dumps(payload) + b"\n\n"
    relayed, _, _ = await relay([chunk("a"), event, USAGE + b"\n\n"])
    events = await collect(relayed)
    assert_nothing_upstream_leaks(events)
    assert events[0] == chunk("a") and len(events) == 2
    assert orjson.loads(events[1].removeprefix(b"data: ")) == {
        "error": {"message": FALLBACK, "type": "invalid_request_error", "param": None, "code": None}
    }


async def test_multi_line_data_is_written_again_on_one_line() -> None:
    event = b'data: {"choices": [{"delta":\r\ndata: {"content": "hi"}}]}\r\n\r\n'
    relayed, settler, _ = await relay([event, b"data:[DONE]\r\n\r\n"])
    assert await collect(relayed) == [chunk("hi"), b"data: [DONE]\n\n"]
    assert settler.settled[0].output_tokens == 1


@pytest.mark.parametrize("data", [b'"org-AcmeCorp99"', b'["sk-upstream-SECRET123"]', b"12"])
async def test_data_that_is_no_json_object_is_not_relayed_and_ends_the_stream(data: bytes) -> None:
    relayed, settler, _ = await relay([chunk("a"), b"data: " + data + b"\n\n", chunk("b")])
    events = await collect(relayed)
    assert_nothing_upstream_leaks(events)
    assert events[0] == chunk("a") and len(events) == 2 and error_code(events[1]) == "upstream_error"
    assert settler.settled[0].status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR


async def test_usage_null_on_content_chunks_and_usage_beside_choices_are_handled() -> None:
    null_usage = b'data: {"choices": [{"delta": {"content": "[DONE]"}}], "usage": null}\n\n'
    with_choices = b'data: {"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    relayed, settler, _ = await relay([null_usage, with_choices])
    assert await collect(relayed) == [null_usage, with_choices]
    assert (settler.settled[0].input_tokens, settler.settled[0].output_tokens) == (1, 2)


async def test_a_stream_past_its_deadline_ends_with_a_timeout_event() -> None:
    loop_start = time.perf_counter()
    relayed, settler, upstream = await relay(
        [chunk(str(i)) for i in range(1000)], pause=0.01, deadline=loop_start + 0.2
    )
    events = await collect(relayed)
    assert 5 < len(events) < 100 and error_code(events[-1]) == "upstream_timeout"
    assert settler.settled[0].status == usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
    assert upstream.closed
