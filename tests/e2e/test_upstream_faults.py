"""Upstream faults end to end: each gives the client an OpenAI-shaped error, settles once, leaks nothing.

Real control and edge processes, a raw-socket upstream that misbehaves on purpose
(tests/support/fault_upstream.py), the official ``openai`` SDK as the client. Every
request runs on a key with an output-token budget, which must show nothing reserved
afterwards. The edges use small timeouts: connect 0.3 s, read 0.5 s, whole exchange 2 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from claudeopus.v1 import budgets_pb2, usage_pb2
from tests.support import admin
from tests.support.databases import fresh_database
from tests.support.fault_upstream import FaultUpstream, unanswered_port
from tests.support.manager import Manager
from tests.support.prices import serve_fake_models
from tests.support.processes import Process, start_control, start_edge

UPSTREAM_ERROR = usage_pb2.USAGE_STATUS_UPSTREAM_ERROR
SUCCEEDED = usage_pb2.USAGE_STATUS_SUCCEEDED
DISCONNECTED = usage_pb2.USAGE_STATUS_CLIENT_DISCONNECTED
SMALL_TIMEOUTS = {
    "CLAUDEOPUS_UPSTREAM_CONNECT_TIMEOUT": "0.3",
    "CLAUDEOPUS_UPSTREAM_READ_TIMEOUT": "0.5",
    "CLAUDEOPUS_UPSTREAM_MAX_DURATION": "2",
    "CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES": "1",
    "CLAUDEOPUS_ACCESS_LOG": "off",
}
MAX_TOKENS = 16
BUDGET = 1_000_000
RETRY_LOG = "upstream connection failed; retry"


@dataclass
class Edge:
    process: Process
    url: str


@dataclass
class Stack:
    manager: Manager
    upstream: FaultUpstream
    late: FaultUpstream  # the upstream of the edge that retries many times
    edge: Edge  # small timeouts, one retry
    silent: Edge  # its upstream port never completes a connection
    patient: Edge  # 40 retries

    def key(self) -> tuple[str, str, str]:
        """A new user key with an output-token budget: (key name, secret, budget name)."""
        name, secret = self.manager.user_key()
        budget = self.manager.create_budget(name, budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS, BUDGET)
        return name, secret, budget


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("faults")
    token = secrets.token_urlsafe(32)
    processes: list[Process] = []
    with (
        fresh_database(log_dir) as url,
        FaultUpstream() as upstream,
        FaultUpstream() as late,
        unanswered_port() as silent_port,
    ):
        try:
            control, port = start_control(url, token, log_dir)
            processes.append(control)

            def edge(name: str, upstream_url: str, **env: str) -> Edge:
                process, edge_port = start_edge(port, upstream_url, token, log_dir, name=name, env=SMALL_TIMEOUTS | env)
                processes.append(process)
                return Edge(process, f"http://127.0.0.1:{edge_port}/v1")

            main = edge("edge", upstream.url)
            silent = edge("silent", f"http://127.0.0.1:{silent_port}/v1")
            patient = edge("patient", late.url, CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES="40")
            target = f"127.0.0.1:{port}"
            boot = admin.bootstrap(target, log_dir)
            serve_fake_models(target, boot.secret)  # only priced models are served
            manager = Manager(target, boot.secret)
            try:
                yield Stack(manager, upstream, late, main, silent, patient)
            finally:
                manager.close()
        finally:
            for process in reversed(processes):
                process.stop()


def _sdk(edge: Edge, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=edge.url, api_key=secret, max_retries=0, timeout=15)


def _create(edge: Edge, secret: str, model: str, stream: bool = False):  # type: ignore[no-untyped-def]
    return _sdk(edge, secret).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "fault-prompt"}], max_tokens=MAX_TOKENS, stream=stream
    )


def _settled_once(stack: Stack, key_name: str, budget: str) -> usage_pb2.UsageRecord:
    """The key's one usage row, settled; and its budget holds nothing reserved any more."""
    [record] = stack.manager.settled(key_name, 1)
    spent, reserved, _ = stack.manager.released(budget)
    assert reserved == 0
    assert spent == record.output_tokens
    return record


# (fault, edge, HTTP status, OpenAI error code, upstream requests seen)
BEFORE_ANY_ANSWER = [
    ("refused", "edge", 502, "upstream_error", 0),
    ("connect-timeout", "silent", 504, "upstream_timeout", 0),
    ("fault-hang", "edge", 504, "upstream_timeout", 1),
    ("fault-reset", "edge", 502, "upstream_error", 1),
    ("fault-close", "edge", 502, "upstream_error", 1),
    ("fault-status-429", "edge", 429, "upstream_rate_limited", 1),
    ("fault-status-503", "edge", 502, "upstream_error", 1),
]
AFTER_HEADERS = [
    ("fault-stall", 504, "upstream_timeout"),
    ("fault-reset-mid", 502, "upstream_error"),
    ("fault-truncated", 502, "upstream_error"),
    ("fault-endless", 504, "upstream_timeout"),
    ("fault-malformed", 502, "upstream_error"),
]


def _call_with_fault(stack: Stack, fault: str, edge_name: str, secret: str, stream: bool) -> object:
    edge: Edge = getattr(stack, edge_name)
    if fault == "refused":
        with stack.upstream.refusing():
            return _create(edge, secret, "fault-ok", stream)
    return _create(edge, secret, "fault-ok" if fault == "connect-timeout" else fault, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("fault", "edge_name", "status", "code", "seen"), BEFORE_ANY_ANSWER)
def test_faults_before_any_answer_are_openai_errors(
    stack: Stack, fault: str, edge_name: str, status: int, code: str, seen: int, stream: bool
) -> None:
    key_name, secret, budget = stack.key()
    before = len(stack.upstream.requests)
    retries_logged = stack.edge.process.output().count(RETRY_LOG)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        _call_with_fault(stack, fault, edge_name, secret, stream)
    assert caught.value.status_code == status
    assert (caught.value.code, caught.value.type) == (code, "rate_limit_error" if status == 429 else "server_error")
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert "upstream says no" not in caught.value.response.text
    assert caught.value.response.headers["x-request-id"]
    assert time.monotonic() - started < 2.5
    # Not retried once the request may have reached the upstream; a refused connection is, once.
    assert len(stack.upstream.requests) - before == seen
    new_retries = stack.edge.process.output().count(RETRY_LOG) - retries_logged
    assert new_retries == (1 if fault == "refused" else 0)
    record = _settled_once(stack, key_name, budget)
    assert (record.status, record.http_status) == (UPSTREAM_ERROR, status)
    assert (record.input_tokens, record.output_tokens) == (0, 0)


@pytest.mark.parametrize(("fault", "status", "code"), AFTER_HEADERS)
def test_faults_after_the_headers_without_stream_are_openai_errors(
    stack: Stack, fault: str, status: int, code: str
) -> None:
    key_name, secret, budget = stack.key()
    before = len(stack.upstream.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        _create(stack.edge, secret, fault)
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert "not json" not in caught.value.response.text
    assert len(stack.upstream.requests) - before == 1
    record = _settled_once(stack, key_name, budget)
    assert (record.status, record.http_status, record.output_tokens) == (UPSTREAM_ERROR, status, 0)


# A stream that started (HTTP 200) cannot change its status: the edge ends it with one
# OpenAI error event, which the SDK raises as APIError with the error's code.
MID_STREAM = [
    ("fault-stall", 2, "upstream_timeout"),
    ("fault-reset-mid", 2, "upstream_error"),
    ("fault-truncated", 1, "upstream_error"),
    ("fault-endless", 30, "upstream_timeout"),  # 2 s of a chunk every 50 ms: at least 30
    ("fault-early", 2, "upstream_error"),  # ended cleanly, but without usage or [DONE]
    ("fault-malformed", 0, "upstream_error"),  # the event that is not JSON is not relayed
]


@pytest.mark.parametrize(("fault", "chunks", "code"), MID_STREAM)
def test_mid_stream_faults_end_the_stream_with_an_error_event(stack: Stack, fault: str, chunks: int, code: str) -> None:
    key_name, secret, budget = stack.key()
    received: list[object] = []
    started = time.monotonic()
    stream = _create(stack.edge, secret, fault, stream=True)
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)
    received_count = len(received)
    assert not isinstance(caught.value, openai.APIStatusError)  # the status line said 200
    assert caught.value.code == code and caught.value.type == "server_error"
    assert received_count >= chunks if fault == "fault-endless" else received_count == chunks
    assert time.monotonic() - started < 3.0  # bounded by the read timeout or the longest exchange
    record = _settled_once(stack, key_name, budget)
    # http_status is what the client got on the status line; the tokens are estimated from the text relayed.
    assert (record.status, record.http_status) == (UPSTREAM_ERROR, 200)
    assert record.source == usage_pb2.USAGE_SOURCE_ESTIMATED
    assert "fault-prompt" not in str(caught.value.body) and "not json" not in str(caught.value.body)
    assert record.output_tokens == 0 if chunks == 0 else 1 <= record.output_tokens <= MAX_TOKENS


def test_a_proper_answer_still_works(stack: Stack) -> None:
    key_name, secret, budget = stack.key()
    assert _create(stack.edge, secret, "fault-ok").choices[0].message.content == "fine"
    assert len(list(_create(stack.edge, secret, "fault-ok", stream=True))) == 2  # w0, w1 (usage dropped)
    records = stack.manager.settled(key_name, 2)
    assert {(r.status, r.output_tokens) for r in records} == {(SUCCEEDED, 3)}
    assert stack.manager.released(budget)[:2] == (6, 0)


def test_a_refused_connection_is_retried_until_the_upstream_listens(stack: Stack) -> None:
    key_name, secret, _ = stack.key()
    edge = stack.patient
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with stack.late.refusing():
            answer = pool.submit(_create, edge, secret, "fault-ok")
            deadline = time.monotonic() + 5
            while RETRY_LOG not in edge.process.output():
                assert time.monotonic() < deadline, "the edge never retried"
                time.sleep(0.01)
        assert answer.result(10).choices[0].message.content == "fine"
    assert stack.late.requests == ["fault-ok"]  # sent once, when a connection was made
    [record] = stack.manager.settled(key_name, 1)
    assert (record.status, record.http_status) == (SUCCEEDED, 200)


# -- leaks ------------------------------------------------------------------------------

ROUNDS = 5
REFUSED_PER_ROUND = 10
MIXED = ["fault-reset", "fault-reset-mid", "fault-close", "fault-truncated", "fault-hang", "fault-stall", "disconnect"]
MIXED_PER_ROUND = 56  # 8 of each


def _fds(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    links = []
    for name in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            links.append(os.readlink(fd_dir / name))
    return links


def _sockets_to(pid: int, port: int) -> int:
    """The edge's TCP sockets whose remote end is ``port`` on loopback (/proc/PID/net/tcp by inode)."""
    inodes = {link[8:-1] for link in _fds(pid) if link.startswith("socket:[")}
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[9] in inodes:
            count += 1
    return count


async def _one(client: httpx.AsyncClient, url: str, secret: str, model: str) -> int:
    stream = model in ("fault-reset-mid", "fault-stall", "disconnect")
    body = {
        "model": "fault-slow" if model == "disconnect" else model,
        "messages": [{"role": "user", "content": "fault-prompt"}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {secret}"}
    async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as response:
        async for _ in response.aiter_bytes():
            if model == "disconnect":
                return -1  # leave after the first bytes: the edge must notice and let go
        return response.status_code


async def _storm(stack: Stack, secret: str) -> list[int]:
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:
        for _ in range(ROUNDS):
            with stack.upstream.refusing():
                batch = [_one(client, stack.edge.url, secret, "fault-ok") for _ in range(REFUSED_PER_ROUND)]
                statuses += await asyncio.gather(*batch)
            models = [MIXED[i % len(MIXED)] for i in range(MIXED_PER_ROUND)]
            statuses += await asyncio.gather(*(_one(client, stack.edge.url, secret, m) for m in models))
    return statuses


def test_many_faults_leak_no_connection_or_reservation(stack: Stack) -> None:
    key_name, secret, budget = stack.key()
    pid, port = stack.edge.process.popen.pid, stack.upstream.port
    fds_before, sockets_before = len(_fds(pid)), _sockets_to(pid, port)
    statuses = asyncio.run(_storm(stack, secret))
    total = ROUNDS * (REFUSED_PER_ROUND + MIXED_PER_ROUND)
    assert len(statuses) == total
    # Streams that broke mid-way started with 200; everything else is 502/504; never a 500.
    assert set(statuses) <= {200, 502, 504, -1}, sorted(set(statuses))
    assert statuses.count(504) == ROUNDS * MIXED_PER_ROUND // len(MIXED)  # the fault-hang ones
    records = stack.manager.settled(key_name, total, timeout=30)
    assert len({r.request_id for r in records}) == total
    states = {r.status for r in records}
    assert states <= {UPSTREAM_ERROR, DISCONNECTED}, states
    assert sum(r.status == DISCONNECTED for r in records) == ROUNDS * MIXED_PER_ROUND // len(MIXED)
    assert stack.manager.released(budget)[1] == 0
    deadline = time.monotonic() + 5
    while True:
        fds_after, sockets_after = len(_fds(pid)), _sockets_to(pid, port)
        # Every fault connection is closed; the upstream closes after each answer, so none idles.
        if (fds_after <= fds_before + 2 and sockets_after == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    figures = f"fds {fds_before} -> {fds_after}; upstream sockets {sockets_before} -> {sockets_after}"
    print(f"\nleak check: {total} requests; {figures}")
    assert sockets_after == 0
    assert fds_after <= fds_before + 2
    assert stack.upstream.open_connections == 0
    # No prompt in the edge's output, and no fault became an unhandled exception.
    output = stack.edge.process.output()
    assert "fault-prompt" not in output
    assert "Traceback" not in output and "unhandled" not in output
