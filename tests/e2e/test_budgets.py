"""Hard budgets end to end: real control and edge processes, a fake upstream, exact numbers.

Every admitted request holds its worst case (input bound = body bytes, output
cap = max_tokens or the control's default) in every budget on its key, its
account and each ancestor, and settles to the real usage; a refused request
gets HTTP 429 ``insufficient_quota`` and never reaches the upstream. These
tests check that, under concurrency, across replicas, through a reseller, when
the client disconnects, when the edge dies, and when the upstream overspends.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import openai
import orjson
import pytest
from google.protobuf import duration_pb2
from openai.types.chat import ChatCompletionMessageParam

from claudeopus.client import FailedPreconditionError
from claudeopus.v1 import budgets_pb2, gateway_pb2, gateway_pb2_grpc, usage_pb2
from tests.support import admin
from tests.support.databases import engine, fresh_database
from tests.support.fake_upstream import GREEDY_WORDS, PAUSE_SECONDS, FakeUpstream, Reported, ThreadedServer
from tests.support.manager import Manager
from tests.support.prices import serve_fake_models
from tests.support.processes import Gateway, Process, start_control, start_edge

INPUT = budgets_pb2.BUDGET_METRIC_INPUT_TOKENS
OUTPUT = budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS
TOTAL = budgets_pb2.BUDGET_PERIOD_TOTAL
SUCCEEDED = usage_pb2.USAGE_STATUS_SUCCEEDED
DISCONNECTED = usage_pb2.USAGE_STATUS_CLIENT_DISCONNECTED
EXPIRED = usage_pb2.USAGE_STATUS_EXPIRED
RESERVED = usage_pb2.USAGE_STATUS_RESERVED
REPORTED = usage_pb2.USAGE_SOURCE_REPORTED
ESTIMATED = usage_pb2.USAGE_SOURCE_ESTIMATED
RESERVED_SOURCE = usage_pb2.USAGE_SOURCE_RESERVED

# The control's default output reservation when a request names no max_tokens (ControlSettings).
CONTROL_DEFAULT_OUTPUT_TOKENS = 4096
# The short-lived stack's settings: expire fast, and a small default cap.
SHORT_TIMEOUT_SECONDS = 2
SHORT_DEFAULT_OUTPUT_TOKENS = 16
CAPPED_MODEL, CAPPED_MODEL_TOKENS = "fake-capped", 9

BURST = 200
BURST_MAX_TOKENS = 5
BURST_ADMITTED = 37
# What the fake upstream reports as prompt tokens for a one-message request.
FAKE_PROMPT_TOKENS = 8


@pytest.fixture
def manager(gateway: Gateway) -> Iterator[Manager]:
    with_manager = Manager(gateway.control_target, gateway.admin_key)
    try:
        yield with_manager
    finally:
        with_manager.close()


def _marker() -> str:
    """A unique user message, to find a test's own requests among everything the fake upstream saw."""
    return f"budget-{secrets.token_hex(6)}"


def _reported(upstream: FakeUpstream, marker: str) -> list[Reported]:
    return [r for r in list(upstream.reported) if r.body["messages"][-1].get("content") == marker]


def _calls(upstream: FakeUpstream, marker: str) -> int:
    return sum(
        1
        for r in list(upstream.received)
        if r.path == "/v1/chat/completions" and r.body and r.body["messages"][-1].get("content") == marker
    )


def _openai(edge_url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=edge_url, api_key=secret, max_retries=0, timeout=30)


def _ask(
    edge_url: str,
    secret: str,
    *,
    model: str = "fake-1",
    content: str = "x",
    max_tokens: int | None = None,
    stream: bool = False,
) -> int:
    """One completion through the official SDK; returns how many words (content chunks, when streaming) came back."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": content}]
    cap = openai.omit if max_tokens is None else max_tokens
    with _openai(edge_url, secret) as client:
        if stream:
            chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=cap, stream=True)
            return sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content)
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=cap)
        return len((reply.choices[0].message.content or "").split())


def _assert_refused(error: openai.RateLimitError) -> dict[str, object]:
    """A budget refusal: HTTP 429, OpenAI's insufficient_quota shape; returns the error object."""
    assert error.status_code == 429
    body = error.body
    assert isinstance(body, dict), body
    assert body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota", body
    return body


# -- 1 and 2: a burst of concurrent requests against one budget --------------------------


@dataclass
class Answer:
    stream: bool
    status: int
    code: str | None = None
    words: int = 0


async def _one(client: openai.AsyncOpenAI, marker: str, stream: bool) -> Answer:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": marker}]
    try:
        if stream:
            chunks = await client.chat.completions.create(
                model="fake-1",
                messages=messages,
                max_tokens=BURST_MAX_TOKENS,
                stream=True,
            )
            words = 0
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    words += 1
            return Answer(stream, 200, words=words)
        reply = await client.chat.completions.create(
            model="fake-1",
            messages=messages,
            max_tokens=BURST_MAX_TOKENS,
        )
        assert reply.usage is not None and reply.usage.completion_tokens == BURST_MAX_TOKENS
        return Answer(stream, 200, words=len((reply.choices[0].message.content or "").split()))
    except openai.RateLimitError as error:
        body = _assert_refused(error)
        return Answer(stream, 429, code=str(body["code"]))


async def _burst(edge_urls: list[str], key_secrets: list[str], marker: str) -> list[Answer]:
    """BURST concurrent requests: every other one streaming, spread evenly over edges, then keys."""
    clients = {
        (url, secret): openai.AsyncOpenAI(base_url=url, api_key=secret, max_retries=0, timeout=60)
        for url in edge_urls
        for secret in key_secrets
    }

    def client(i: int) -> openai.AsyncOpenAI:
        url = edge_urls[(i // 2) % len(edge_urls)]
        return clients[url, key_secrets[(i // (2 * len(edge_urls))) % len(key_secrets)]]

    try:
        return await asyncio.gather(*(_one(client(i), marker, stream=i % 2 == 0) for i in range(BURST)))
    finally:
        for each in clients.values():
            await each.close()


def _check_burst(manager: Manager, upstream: FakeUpstream, edge_urls: list[str], shape: str) -> dict[str, object]:
    """One burst against an OUTPUT_TOKENS budget that admits exactly BURST_ADMITTED requests.

    ``shape``: ``key`` (the budget on the user's key), ``account`` (on the user's account) or
    ``reseller`` (two sub-users of one reseller share the reseller's budget; each also has an
    output budget on its account and an input budget on its key, so every request holds three
    counters, the reseller's contended by all).
    """
    limit = BURST_ADMITTED * BURST_MAX_TOKENS
    users = 2 if shape == "reseller" else 1
    parent = manager.account(role="reseller") if shape == "reseller" else ""
    accounts = [manager.account(parent=parent) for _ in range(users)]
    keys = [manager.key(account) for account in accounts]
    extra: list[tuple[str, str, int, int]] = []  # (budget, owner, metric, limit) not binding the burst
    if shape == "key":
        binding = manager.create_budget(keys[0][0], OUTPUT, limit)
    elif shape == "account":
        binding = manager.create_budget(accounts[0], OUTPUT, limit)
    else:
        binding = manager.create_budget(parent, OUTPUT, limit)
        for account, (key_name, _) in zip(accounts, keys, strict=True):
            extra.append((manager.create_budget(account, OUTPUT, limit), account, OUTPUT, limit))
            extra.append((manager.create_budget(key_name, INPUT, 100_000), key_name, INPUT, 100_000))
    marker = _marker()

    started = time.monotonic()
    answers = asyncio.run(_burst(edge_urls, [secret for _, secret in keys], marker))
    elapsed = time.monotonic() - started

    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 429]
    assert len(admitted) == BURST_ADMITTED, f"{len(admitted)} admitted of {BURST}"
    assert len(refused) == BURST - BURST_ADMITTED, [a for a in answers if a.status not in (200, 429)]
    assert all(a.code == "insufficient_quota" for a in refused)
    assert all(a.words == BURST_MAX_TOKENS for a in admitted)
    assert sum(a.stream for a in answers) == BURST // 2

    records = manager.settled("" if parent else keys[0][0], BURST_ADMITTED, parent=parent)
    spent, reserved, remaining = manager.counters(binding)
    reported = _reported(upstream, marker)
    row_output = sum(r.output_tokens for r in records)
    upstream_output = sum(r.usage["completion_tokens"] for r in reported)
    assert (spent, reserved, remaining) == (limit, 0, 0)
    assert row_output == spent == upstream_output == limit
    assert len(reported) == _calls(upstream, marker) == BURST_ADMITTED, "refused requests never reach the upstream"
    assert all((r.status, r.source, r.output_tokens) == (SUCCEEDED, REPORTED, BURST_MAX_TOKENS) for r in records)
    assert sum(r.input_tokens for r in records) == sum(r.usage["prompt_tokens"] for r in reported)
    for budget, owner, metric, budget_limit in extra:
        mine = [r for r in records if owner in (r.account, r.api_key)]
        used = sum(r.output_tokens if metric == OUTPUT else r.input_tokens for r in mine)
        assert manager.counters(budget) == (used, 0, budget_limit - used), owner
    return {
        "admitted": len(admitted),
        "streams_admitted": sum(a.stream for a in admitted),
        "admitted_per_key": [sum(1 for r in records if r.api_key == key_name) for key_name, _ in keys],
        "spent": spent,
        "limit": limit,
        "rows": len(records),
        "row_output": row_output,
        "upstream_output": upstream_output,
        "seconds": round(elapsed, 2),
    }


def test_concurrent_burst_admits_exactly_what_the_budget_holds(
    gateway: Gateway, manager: Manager, record_property: Callable[[str, object], None]
) -> None:
    figures = _check_burst(manager, gateway.upstream, [gateway.edge_url], "key")
    record_property("burst", figures)
    print("burst on one edge:", figures)


@dataclass
class Replicas:
    """Two controls on one PostgreSQL database, one edge on each, one fake upstream."""

    target: str
    admin_key: str
    edge_urls: list[str]
    upstream: FakeUpstream
    processes: list[Process] = field(default_factory=list)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    if engine() == "sqlite":
        pytest.skip(
            "two control replicas need one shared PostgreSQL database; "
            "set CLAUDEOPUS_TEST_DATABASE=postgres://... to run this test"
        )
    log_dir = tmp_path_factory.mktemp("replicas")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    processes: list[Process] = []
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        try:
            ports = []
            for name in ("control-a", "control-b"):
                process, port = start_control(url, token, log_dir, name)
                processes.append(process)
                ports.append(port)
            edge_urls = []
            for name, port in zip(("edge-a", "edge-b"), ports, strict=True):
                process, edge_port = start_edge(port, upstream_server.url, token, log_dir, name=name)
                processes.append(process)
                edge_urls.append(f"http://127.0.0.1:{edge_port}/v1")
            target = f"127.0.0.1:{ports[0]}"
            boot = admin.bootstrap(target, log_dir)
            serve_fake_models(target, boot.secret)  # only priced models are served
            yield Replicas(target, boot.secret, edge_urls, upstream, processes)
        finally:
            for process in reversed(processes):
                process.stop()


@pytest.mark.parametrize("shape", ["account", "reseller"])
def test_concurrent_burst_over_two_edges_and_two_controls(
    replicas: Replicas, shape: str, record_property: Callable[[str, object], None]
) -> None:
    manager = Manager(replicas.target, replicas.admin_key)
    try:
        figures = _check_burst(manager, replicas.upstream, replicas.edge_urls, shape)
    finally:
        manager.close()
    assert all(p.alive() for p in replicas.processes)
    record_property("burst", figures)
    print(f"burst on two edges / two controls ({shape}):", figures)


# -- 3: a reseller's budget caps its sub-users ----------------------------------------


def test_an_exhausted_reseller_budget_refuses_a_sub_user_before_the_upstream(
    gateway: Gateway, manager: Manager
) -> None:
    reseller = manager.account(role="reseller")
    sibling_key, sibling_secret = manager.key(manager.account(parent=reseller))
    user_key, user_secret = manager.key(manager.account(parent=reseller))
    # The sub-user's own budget is held before its reseller's (deeper owners first, and the lower id),
    # so a refusal by the reseller's budget must also roll back the hold already taken in the sub-user's.
    own = manager.create_budget(user_key, OUTPUT, 10)
    above = manager.create_budget(reseller, OUTPUT, 10)
    with pytest.raises(FailedPreconditionError) as caught:
        manager.create_budget(manager.account(parent=reseller), OUTPUT, 11)
    assert caught.value.reason == "BUDGET_ABOVE_PARENT"

    for _ in range(2):
        assert _ask(gateway.edge_url, sibling_secret, max_tokens=5) == 5
    manager.settled(sibling_key, 2)
    assert manager.counters(above) == (10, 0, 0)

    marker = _marker()
    calls_before = len(gateway.upstream.received)
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(gateway.edge_url, user_secret, content=marker, max_tokens=5)
    body = _assert_refused(refused.value)
    message = str(body["message"])
    assert "reseller" in message and "not sent upstream" in message, message
    assert "budgets/" not in message, "a reseller's own budget is not the sub-user's business"
    assert not any(c.isdigit() for c in message) and "output" not in message, "nor its limit or kind: " + message
    assert len(gateway.upstream.received) == calls_before and _calls(gateway.upstream, marker) == 0
    assert manager.counters(own) == (0, 0, 10), "the hold taken in the sub-user's own budget was rolled back"
    assert manager.counters(above) == (10, 0, 0)
    assert manager.records(user_key) == [], "a refused request leaves no usage row"


# -- 4: a client disconnecting mid-stream ------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """Where the client hangs up, and what the one usage row must then say."""

    model: str
    max_tokens: int
    # The client closes the connection after this many `data:` lines (0: right after the headers).
    lines: int
    source: usage_pb2.UsageSource.ValueType
    # Output tokens billed; input is the fake's prompt count when REPORTED, else the edge's estimate.
    output_tokens: int


# The fake streams "echo:x ", "w0 ", "w1 ", ... one word per chunk, then a finish chunk. Without
# usage the edge bills about 4 characters of relayed text per token, at least one token per
# relayed chunk, at most max_tokens.
CUTS = {
    # No chunk was relayed: nothing is billed.
    "before-first-chunk": Cut("fake-pause-first", 5, 0, ESTIMATED, 0),
    # "echo:x w0 w1 " (13 characters, 3 chunks): 4 tokens.
    "mid-stream": Cut("fake-slow", 40, 3, ESTIMATED, 4),
    # Five words (19 characters) and the finish chunk, no usage yet: 6 chunks, capped at max_tokens 5.
    "before-usage-chunk": Cut("fake-pause-usage", 5, 6, ESTIMATED, 5),
    # The usage chunk arrived, [DONE] did not: the reported usage is billed, still as a disconnect.
    "after-usage-chunk": Cut("fake-pause-done", 5, 7, REPORTED, 5),
}


@pytest.mark.parametrize("where", list(CUTS))
def test_client_disconnect_leaves_one_row_and_counters_equal_to_it(
    gateway: Gateway, manager: Manager, where: str
) -> None:
    cut = CUTS[where]
    key_name, secret = manager.user_key()
    input_budget = manager.create_budget(key_name, INPUT, 100_000)
    output_budget = manager.create_budget(key_name, OUTPUT, 1_000)
    raw = orjson.dumps(
        {
            "model": cut.model,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": cut.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    lines: list[dict[str, object]] = []
    with httpx.stream(
        "POST",
        f"{gateway.edge_url}/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        if cut.lines:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(orjson.loads(line.removeprefix("data: ")))
                if len(lines) == cut.lines:
                    break
    # Leaving the block closes the connection; check the client saw exactly where it hung up.
    if where == "before-usage-chunk":
        assert lines[-1]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    if where == "after-usage-chunk":
        assert lines[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}

    [record] = manager.settled(key_name, 1)
    expected_input = FAKE_PROMPT_TOKENS if cut.source == REPORTED else len(raw) // 4 + 1
    if cut.output_tokens == 0:
        expected_input = 0  # nothing was produced: nothing is billed
    assert usage_pb2.UsageStatus.Name(record.status) == usage_pb2.UsageStatus.Name(DISCONNECTED)
    assert usage_pb2.UsageSource.Name(record.source) == usage_pb2.UsageSource.Name(cut.source)
    assert (record.input_tokens, record.output_tokens) == (expected_input, cut.output_tokens)
    assert record.http_status == 200
    assert record.latency.ToMilliseconds() < PAUSE_SECONDS * 1000 * 0.8, "settled when the client left"
    assert manager.released(input_budget) == (record.input_tokens, 0, 100_000 - record.input_tokens)
    assert manager.released(output_budget) == (record.output_tokens, 0, 1_000 - record.output_tokens)


# -- 5 and 7: a stack of its own, with a short reservation timeout and a small default cap -------


@dataclass
class ShortStack:
    log_dir: Path
    token: str
    control_port: int
    target: str
    admin_key: str
    upstream: FakeUpstream
    upstream_url: str
    processes: list[Process] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)

    def start_edge(self, name: str, env: dict[str, str] | None = None) -> tuple[Process, str]:
        process, port = start_edge(self.control_port, self.upstream_url, self.token, self.log_dir, name=name, env=env)
        self.processes.append(process)
        return process, f"http://127.0.0.1:{port}/v1"

    def edge(self, env: dict[str, str]) -> str:
        """A running edge with ``env``, started once and shared."""
        wanted = repr(sorted(env.items()))
        if wanted not in self.edges:
            self.edges[wanted] = self.start_edge(f"edge-{len(self.edges)}", env)[1]
        return self.edges[wanted]


@pytest.fixture(scope="module")
def short_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShortStack]:
    log_dir = tmp_path_factory.mktemp("short")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    env = {
        "CLAUDEOPUS_RESERVATION_TIMEOUT": str(SHORT_TIMEOUT_SECONDS),
        "CLAUDEOPUS_SWEEP_INTERVAL": "0.5",
        "CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS": str(SHORT_DEFAULT_OUTPUT_TOKENS),
        "CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS": f"{CAPPED_MODEL}={CAPPED_MODEL_TOKENS}",
    }
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        control, port = start_control(url, token, log_dir, "control-short", env=env)
        stack = ShortStack(log_dir, token, port, f"127.0.0.1:{port}", "", upstream, upstream_server.url, [control])
        try:
            boot = admin.bootstrap(stack.target, log_dir)
            serve_fake_models(stack.target, boot.secret)  # only priced models are served
            stack.admin_key = boot.secret
            yield stack
        finally:
            for process in reversed(stack.processes):
                process.stop()


def _settle_request(request_id: str, input_tokens: int, output_tokens: int) -> gateway_pb2.SettleRequest:
    return gateway_pb2.SettleRequest(
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency=duration_pb2.Duration(seconds=1),
        status=SUCCEEDED,
        source=REPORTED,
        http_status=200,
    )


def test_edge_killed_between_authorize_and_settle_is_expired_then_settled_late_once(
    short_stack: ShortStack,
) -> None:
    manager = Manager(short_stack.target, short_stack.admin_key)
    try:
        key_name, secret = manager.user_key()
        input_budget = manager.create_budget(key_name, INPUT, 100_000)
        output_budget = manager.create_budget(key_name, OUTPUT, 1_000)
        edge, edge_url = short_stack.start_edge("edge-killed")
        raw = orjson.dumps(
            {"model": "fake-slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "stream": True}
        )
        received = 0
        with httpx.stream(
            "POST",
            f"{edge_url}/chat/completions",
            content=raw,
            headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            try:
                for line in response.iter_lines():
                    received += line.startswith("data: ")
                    if received == 3:
                        edge.popen.kill()  # SIGKILL: no settle, no goodbye
                        edge.popen.wait(10)
            except httpx.HTTPError:
                pass
        assert received >= 3 and not edge.alive()

        # Until the sweeper looks, the worst case stays held.
        [open_row] = manager.records(key_name)
        if open_row.status == RESERVED:  # the sweeper may already have closed it on a slow machine
            assert manager.counters(input_budget)[1] == len(raw)
            assert manager.counters(output_budget)[1] == 40

        [expired] = manager.settled(key_name, 1, timeout=15)
        assert (expired.request_id, expired.status, expired.source) == (request_id, EXPIRED, RESERVED_SOURCE)
        assert (expired.input_tokens, expired.output_tokens) == (len(raw), 40), "charged the reserved amounts"
        assert manager.counters(input_budget) == (len(raw), 0, 100_000 - len(raw))
        assert manager.counters(output_budget) == (40, 0, 960)

        with grpc.insecure_channel(short_stack.target) as channel:
            gateway_stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            metadata = (("authorization", f"Bearer {short_stack.token}"),)
            late = gateway_stub.Settle(_settle_request(request_id, 8, 3), metadata=metadata, timeout=10)
            assert not late.already_settled
            assert (late.usage_record.status, late.usage_record.source) == (SUCCEEDED, REPORTED)
            assert (late.usage_record.input_tokens, late.usage_record.output_tokens) == (8, 3)
            assert manager.counters(input_budget) == (8, 0, 100_000 - 8)
            assert manager.counters(output_budget) == (3, 0, 997)

            for again in (_settle_request(request_id, 8, 3), _settle_request(request_id, 500, 30)):
                repeated = gateway_stub.Settle(again, metadata=metadata, timeout=10)
                assert repeated.already_settled
                assert (repeated.usage_record.input_tokens, repeated.usage_record.output_tokens) == (8, 3)
        [row] = manager.records(key_name)
        assert (row.status, row.source, row.input_tokens, row.output_tokens) == (SUCCEEDED, REPORTED, 8, 3)
        assert manager.counters(input_budget) == (8, 0, 100_000 - 8)
        assert manager.counters(output_budget) == (3, 0, 997)
    finally:
        manager.close()


# -- 6: an upstream that ignores max_tokens ----------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_an_upstream_ignoring_max_tokens_is_charged_in_full_and_the_next_request_refused(
    gateway: Gateway, manager: Manager, stream: bool
) -> None:
    key_name, secret = manager.user_key()
    limit = 10
    budget = manager.create_budget(key_name, OUTPUT, limit)
    assert _ask(gateway.edge_url, secret, max_tokens=5) == 5
    manager.settled(key_name, 1)
    assert manager.counters(budget) == (5, 0, 5)

    marker = _marker()
    assert _ask(gateway.edge_url, secret, model="fake-greedy", content=marker, max_tokens=5, stream=stream) == (
        GREEDY_WORDS
    )
    [reported] = _reported(gateway.upstream, marker)
    assert reported.usage["completion_tokens"] == GREEDY_WORDS > 5
    records = manager.settled(key_name, 2)
    greedy = next(r for r in records if r.model == "fake-greedy")
    assert (greedy.status, greedy.source, greedy.output_tokens) == (SUCCEEDED, REPORTED, GREEDY_WORDS)
    excess = GREEDY_WORDS - 5
    assert manager.counters(budget) == (limit + excess, 0, 0), "over the limit by exactly the excess"

    calls_before = len(gateway.upstream.received)
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(gateway.edge_url, secret, max_tokens=1)
    _assert_refused(refused.value)
    assert len(gateway.upstream.received) == calls_before
    assert manager.counters(budget) == (limit + excess, 0, 0)
    assert len(manager.records(key_name)) == 2


# -- 7: the default output cap goes upstream only when a budget holds it -----------------------


def _upstream_body(upstream: FakeUpstream, marker: str) -> dict[str, object]:
    [request] = [
        r.body
        for r in list(upstream.received)
        if r.path == "/v1/chat/completions" and r.body and r.body["messages"][-1].get("content") == marker
    ]
    return request


def test_default_output_cap_goes_upstream_only_under_a_budget(gateway: Gateway, manager: Manager) -> None:
    free_key, free_secret = manager.user_key()
    marker = _marker()
    assert _ask(gateway.edge_url, free_secret, content=marker) == 8  # the fake's own default
    sent = _upstream_body(gateway.upstream, marker)
    assert "max_completion_tokens" not in sent and "max_tokens" not in sent, "no budget: nothing injected"
    [free_row] = manager.settled(free_key, 1)
    assert free_row.output_tokens == 8

    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, OUTPUT, 10 * CONTROL_DEFAULT_OUTPUT_TOKENS)
    marker = _marker()
    assert _ask(gateway.edge_url, secret, content=marker) == CONTROL_DEFAULT_OUTPUT_TOKENS
    sent = _upstream_body(gateway.upstream, marker)
    assert sent["max_completion_tokens"] == CONTROL_DEFAULT_OUTPUT_TOKENS and "max_tokens" not in sent
    [row] = manager.settled(key_name, 1)
    assert row.output_tokens == CONTROL_DEFAULT_OUTPUT_TOKENS
    assert manager.counters(budget)[:2] == (CONTROL_DEFAULT_OUTPUT_TOKENS, 0)

    marker = _marker()
    assert _ask(gateway.edge_url, secret, content=marker, max_tokens=3) == 3
    sent = _upstream_body(gateway.upstream, marker)
    assert sent["max_tokens"] == 3 and "max_completion_tokens" not in sent, "the client's own cap is kept"


@pytest.mark.parametrize(
    ("edge_env", "model", "field_name", "tokens"),
    [
        ({}, "fake-1", "max_completion_tokens", SHORT_DEFAULT_OUTPUT_TOKENS),
        ({}, CAPPED_MODEL, "max_completion_tokens", CAPPED_MODEL_TOKENS),
        ({"CLAUDEOPUS_UPSTREAM_MAX_TOKENS_FIELD": "max_tokens"}, "fake-1", "max_tokens", SHORT_DEFAULT_OUTPUT_TOKENS),
    ],
    ids=["default", "per-model", "max_tokens-field"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_default_output_cap_follows_the_control_settings(
    short_stack: ShortStack, edge_env: dict[str, str], model: str, field_name: str, tokens: int, stream: bool
) -> None:
    manager = Manager(short_stack.target, short_stack.admin_key)
    try:
        key_name, secret = manager.user_key()
        budget = manager.create_budget(key_name, OUTPUT, 1_000)
        edge_url = short_stack.edge(edge_env)
        marker = _marker()
        assert _ask(edge_url, secret, model=model, content=marker, stream=stream) == tokens
        sent = _upstream_body(short_stack.upstream, marker)
        other = "max_tokens" if field_name == "max_completion_tokens" else "max_completion_tokens"
        assert sent[field_name] == tokens and other not in sent
        [row] = manager.settled(key_name, 1)
        assert (row.status, row.source, row.output_tokens) == (SUCCEEDED, REPORTED, tokens)
        assert manager.counters(budget) == (tokens, 0, 1_000 - tokens)
    finally:
        manager.close()


def test_a_null_max_completion_tokens_gets_one_unambiguous_cap_upstream(gateway: Gateway, manager: Manager) -> None:
    """A client may send ``"max_completion_tokens": null`` (no limit): the cap must replace it, not repeat it."""
    key_name, secret = manager.user_key()
    manager.create_budget(key_name, OUTPUT, 10 * CONTROL_DEFAULT_OUTPUT_TOKENS)
    marker = _marker()
    raw = orjson.dumps(
        {"model": "fake-1", "messages": [{"role": "user", "content": marker}], "max_completion_tokens": None}
    )
    response = httpx.post(
        f"{gateway.edge_url}/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    [sent] = [r for r in list(gateway.upstream.received) if r.body and marker.encode() in r.raw]
    assert sent.raw.count(b'"max_completion_tokens"') == 1, (
        "the upstream got the key twice (null, then the cap); the edge itself refuses such bodies because "
        f"parsers disagree on which one wins: {sent.raw!r}"
    )


def test_a_budget_created_while_a_request_is_in_flight_counts_it_once_settled(
    gateway: Gateway, manager: Manager
) -> None:
    """Counters equal the sum of the rows: also for a request authorized before its budget existed."""
    key_name, secret = manager.user_key()
    body = {"model": "fake-slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.edge_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # authorized and streaming
        during = manager.create_budget(key_name, OUTPUT, 1_000)
        assert manager.counters(during) == (0, 20, 980), "the request in flight joins the new budget"
        assert sum(1 for line in lines if line.startswith("data: ")) == 21  # 19 more words, the finish chunk, [DONE]
    [row] = manager.settled(key_name, 1)
    assert (row.status, row.output_tokens) == (SUCCEEDED, 20)
    after = manager.create_budget(key_name, INPUT, 1_000)  # starts at what the settled rows already count
    assert manager.counters(after)[0] == row.input_tokens
    assert manager.counters(during) == (20, 0, 980), (
        "the request settled in this period after its owner's budget was created, yet the budget never counts it"
    )


def test_an_upstream_error_releases_the_reservation(gateway: Gateway, manager: Manager) -> None:
    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, OUTPUT, 10)
    with pytest.raises(openai.APIStatusError) as caught:
        _ask(gateway.edge_url, secret, model="fake-status-500", max_tokens=10)
    assert caught.value.status_code == 502
    [row] = manager.settled(key_name, 1)
    assert (row.status, row.input_tokens, row.output_tokens) == (usage_pb2.USAGE_STATUS_UPSTREAM_ERROR, 0, 0)
    assert manager.counters(budget) == (0, 0, 10), "the whole budget is free again"
    assert _ask(gateway.edge_url, secret, max_tokens=10) == 10


def test_a_stream_outliving_the_reservation_timeout_is_expired_then_settled_to_its_real_usage(
    short_stack: ShortStack,
) -> None:
    """The sweeper cannot tell a slow stream from a dead edge: the settle that follows must correct its charge."""
    manager = Manager(short_stack.target, short_stack.admin_key)
    try:
        key_name, secret = manager.user_key()
        input_budget = manager.create_budget(key_name, INPUT, 100_000)
        output_budget = manager.create_budget(key_name, OUTPUT, 1_000)
        edge_url = short_stack.edge({})
        words = int((SHORT_TIMEOUT_SECONDS + 1.5) / 0.05)  # one chunk per 50 ms: well past the timeout
        raw = orjson.dumps(
            {"model": "fake-slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": words, "stream": True}
        )
        expired: usage_pb2.UsageRecord | None = None
        with httpx.stream(
            "POST",
            f"{edge_url}/chat/completions",
            content=raw,
            headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
            timeout=30,
        ) as response:
            for count, line in enumerate(response.iter_lines()):
                if line.startswith("data: ") and count % 10 == 0 and expired is None:
                    expired = next((r for r in manager.records(key_name) if r.status == EXPIRED), None)
                    if expired is not None:  # charged the reservation: the body's bytes and max_tokens
                        assert (expired.input_tokens, expired.output_tokens) == (len(raw), words)
                        assert manager.counters(input_budget)[:2] == (len(raw), 0)
        assert expired is not None, "the sweeper expired the live stream's reservation"
        deadline = time.monotonic() + 10
        while (row := manager.records(key_name)[0]).status == EXPIRED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (row.status, row.source) == (SUCCEEDED, REPORTED)
        assert (row.input_tokens, row.output_tokens) == (FAKE_PROMPT_TOKENS, words)
        assert manager.counters(input_budget) == (FAKE_PROMPT_TOKENS, 0, 100_000 - FAKE_PROMPT_TOKENS)
        assert manager.counters(output_budget) == (words, 0, 1_000 - words)
    finally:
        manager.close()
