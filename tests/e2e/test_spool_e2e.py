"""The durable settle spool end to end: real processes, a few hundred requests in flight, kills.

The fake upstream's ``fake-hold`` model keeps every request open after it was authorized and
forwarded, until the test releases it; meanwhile the test SIGKILLs control, so every settle
finds control gone and goes to the edge's spool. Then control (and, in the second test, the
edge as well) is restarted and the spool replayed. Afterwards every authorized request has
exactly one settled usage row with the usage the upstream reported, and the budgets' counters
equal the sum of the rows: nothing lost, nothing counted twice. Control's sweeper is set far
out (CLAUDEOPUS_RESERVATION_TIMEOUT) so that it cannot be what closes a reservation.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from claudeopus import keys
from claudeopus.client import Client
from claudeopus.edge.metering.spool import encode_record, read_spool
from claudeopus.v1 import usage_pb2
from tests.support import admin
from tests.support.databases import dump_text, fresh_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.prices import serve_fake_models
from tests.support.processes import Process, free_port, start_control, start_edge

IN_FLIGHT = 300
MAX_TOKENS = 5
# What the fake upstream reports as prompt tokens: 7 + the number of messages.
PROMPT_TOKENS = 8
CONTROL_ENV = {"CLAUDEOPUS_RESERVATION_TIMEOUT": "3600", "CLAUDEOPUS_SWEEP_INTERVAL": "60"}
# Generous: 300 authorizes at once queue up on one SQLite writer.
EDGE_ENV = {"CLAUDEOPUS_CONTROL_TIMEOUT": "20"}
UPSTREAM_KEY = "upstream-secret-" + "u" * 24
SUCCEEDED = usage_pb2.USAGE_STATUS_SUCCEEDED
RESERVED = usage_pb2.USAGE_STATUS_RESERVED
REPORTED = usage_pb2.USAGE_SOURCE_REPORTED


@dataclass
class Stack:
    """One control (restartable on its port), one edge (restartable on its spool), a fake upstream."""

    log_dir: Path
    database_url: str
    token: str
    upstream: FakeUpstream
    upstream_url: str
    control_port: int
    spool_dir: Path
    edge_env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    control: Process | None = None
    edge: Process | None = None
    edge_url: str = ""
    admin_key: str = ""

    def start_control(self) -> None:
        name = f"control-{len(self.processes)}"
        self.control, _ = start_control(
            self.database_url, self.token, self.log_dir, name, env=CONTROL_ENV, port=self.control_port
        )
        self.processes.append(self.control)

    def start_edge(self) -> None:
        name = f"edge-{len(self.processes)}"
        self.edge, port = start_edge(
            self.control_port,
            self.upstream_url,
            self.token,
            self.log_dir,
            upstream_key=UPSTREAM_KEY,
            name=name,
            env=self.edge_env,
            spool_dir=self.spool_dir,
        )
        self.processes.append(self.edge)
        self.edge_url = f"http://127.0.0.1:{port}/v1"

    @staticmethod
    def kill(process: Process | None) -> None:
        assert process is not None
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(10)

    def segments(self) -> list[Path]:
        return sorted(self.spool_dir.glob("settles-*.log"))

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes)


def _stack(tmp_path: Path, edge_env: dict[str, str]) -> Iterator[Stack]:
    upstream = FakeUpstream()
    with fresh_database(tmp_path) as url, ThreadedServer(upstream) as server:
        stack = Stack(
            tmp_path, url, secrets.token_urlsafe(32), upstream, server.url, free_port(), tmp_path / "spool", edge_env
        )
        try:
            stack.start_control()
            stack.start_edge()
            boot = admin.bootstrap(f"127.0.0.1:{stack.control_port}", tmp_path, "r@example.com", "")
            serve_fake_models(f"127.0.0.1:{stack.control_port}", boot.secret)  # only priced models are served
            stack.admin_key = boot.secret
            yield stack
        finally:
            upstream.release.set()  # never leave held requests behind
            for process in reversed(stack.processes):
                process.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(tmp_path, EDGE_ENV)


@dataclass
class Customer:
    key_name: str
    secret: str = field(repr=False)
    budgets: dict[str, str]


def _customer(stack: Stack) -> Customer:
    with Client(f"127.0.0.1:{stack.control_port}", key=stack.admin_key) as client:
        account = client.create_account(email=f"u-{secrets.token_hex(4)}@example.com", role="user")
        created = client.create_api_key(parent=account.name)
        key_name = created.api_key.name
        budgets = {
            metric: client.create_budget(key_name, metric=metric, period="total", limit=10_000_000).name
            for metric in ("input_tokens", "output_tokens")
        }
    return Customer(key_name, created.secret, budgets)


# -- requests -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    request_id: str = ""
    code: str = ""
    words: int = 0


def _body(content: str, stream: bool, model: str = "fake-hold", system: str = "") -> bytes:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return orjson.dumps({"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": stream})


async def _ask(client: httpx.AsyncClient, body: bytes, stream: bool) -> Answer:
    async with client.stream("POST", "chat/completions", content=body) as response:
        request_id = response.headers.get("x-request-id", "")
        raw = await response.aread()
    if response.status_code != 200:
        return Answer(response.status_code, request_id, code=orjson.loads(raw)["error"]["code"])
    if not stream:
        return Answer(200, request_id, words=len(orjson.loads(raw)["choices"][0]["message"]["content"].split()))
    events = [line.removeprefix(b"data: ") for line in raw.splitlines() if line.startswith(b"data: ")]
    chunks = [orjson.loads(e) for e in events if e != b"[DONE]"]
    return Answer(
        200, request_id, words=sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content"))
    )


def _forwarded(upstream: FakeUpstream, marker: str) -> int:
    return sum(1 for r in list(upstream.received) if r.body and r.body["messages"][-1].get("content") == marker)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Outage:
    answers: list[Answer]
    refused_meanwhile: list[Answer]


async def _requests_across_a_control_outage(stack: Stack, secret: str, marker: str, count: int, **body: str) -> Outage:
    """``count`` requests (every other one streaming) held in flight; control SIGKILLed under them; then released."""
    limits = httpx.Limits(max_connections=count + 20, max_keepalive_connections=count + 20)
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=stack.edge_url + "/", headers=headers, limits=limits, timeout=60) as client:
        tasks = [asyncio.create_task(_ask(client, _body(marker, i % 2 == 0, **body), i % 2 == 0)) for i in range(count)]
        try:
            try:
                await _until(lambda: _forwarded(stack.upstream, marker) == count, 40, "every request to be forwarded")
            except AssertionError:
                done = [t.result() for t in tasks if t.done() and not t.exception()]
                codes = sorted({(a.status, a.code) for a in done})
                raise AssertionError(
                    f"{_forwarded(stack.upstream, marker)} forwarded, {len(done)} done: {codes}"
                ) from None
            stack.kill(stack.control)  # every one of them is authorized and in flight now
            late = marker + "-late"
            refused = [await _ask(client, _body(late, stream=False, model="fake-1"), False) for _ in range(5)]
            assert _forwarded(stack.upstream, late) == 0, "with control gone nothing new is forwarded"
        finally:
            stack.upstream.release.set()
            answers = await asyncio.gather(*tasks)
    stack.upstream.release.clear()
    return Outage(answers, refused)


def _check_answers(outage: Outage, count: int) -> set[str]:
    assert [a.status for a in outage.answers] == [200] * count
    assert all(a.words == MAX_TOKENS for a in outage.answers)
    assert [(a.status, a.code) for a in outage.refused_meanwhile] == [(503, "control_unavailable")] * 5
    ids = {a.request_id for a in outage.answers}
    assert len(ids) == count
    return ids


def _wait_spooled(stack: Stack, ids: set[str]) -> int:
    """All settles of ``ids`` reach the spool (control is down); returns the spool's size in bytes."""
    deadline = time.monotonic() + 30
    while {r.request_id for r in read_spool(stack.spool_dir)} != ids:
        assert time.monotonic() < deadline, f"{len(read_spool(stack.spool_dir))} of {len(ids)} settles spooled"
        time.sleep(0.05)
    records = read_spool(stack.spool_dir)
    assert len(records) == len(ids), "each settle spooled once"
    assert all(
        (r.outcome.output_tokens, r.outcome.input_tokens, r.outcome.status, r.outcome.source)
        == (5, 8, SUCCEEDED, REPORTED)
        for r in records
    )
    return sum(p.stat().st_size for p in stack.segments())


def _check_settled(stack: Stack, customer: Customer, ids: set[str], timeout: float = 30) -> dict[str, int]:
    """Exactly one settled row per authorized request, the reported usage, counters equal to the rows."""
    target = f"127.0.0.1:{stack.control_port}"
    with Client(target, key=stack.admin_key) as client:
        deadline = time.monotonic() + timeout
        while True:
            rows = list(client.iter_usage_records(api_key=customer.key_name, page_size=1000))
            if len(rows) >= len(ids) and all(r.status != RESERVED for r in rows):
                break
            if time.monotonic() > deadline:
                reserved = sum(r.status == RESERVED for r in rows)
                raise AssertionError(f"{len(rows)} rows, {reserved} still reserved; spool: {stack.segments()}")
            time.sleep(0.1)
        assert sorted(r.request_id for r in rows) == sorted(ids), "one row per authorized request, no other"
        assert all((r.status, r.source) == (SUCCEEDED, REPORTED) for r in rows)
        assert all((r.input_tokens, r.output_tokens) == (PROMPT_TOKENS, MAX_TOKENS) for r in rows)
        totals = {
            "input_tokens": sum(r.input_tokens for r in rows),
            "output_tokens": sum(r.output_tokens for r in rows),
        }
        for metric, name in customer.budgets.items():
            budget = client.get_budget(name)
            lease_ends = time.monotonic() + 10  # the edge gives its budget lease back within 1 s
            while budget.reserved and time.monotonic() < lease_ends:
                time.sleep(0.05)
                budget = client.get_budget(name)
            assert (budget.spent, budget.reserved) == (totals[metric], 0), f"{metric} counters == the rows"
    deadline = time.monotonic() + 10
    while stack.segments():
        assert time.monotonic() < deadline, "replayed segments are removed"
        time.sleep(0.05)
    return {"rows": len(rows), **totals}


# -- 1: control killed under a few hundred requests in flight ------------------------------------


def test_control_killed_under_load_settles_are_spooled_and_replayed_once(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    customer = _customer(stack)
    marker = f"spool-{secrets.token_hex(6)}"
    started = time.monotonic()
    outage = asyncio.run(_requests_across_a_control_outage(stack, customer.secret, marker, IN_FLIGHT))
    ids = _check_answers(outage, IN_FLIGHT)
    spooled_bytes = _wait_spooled(stack, ids)
    assert stack.edge is not None and stack.edge.alive()

    stack.start_control()  # on the same port: the edge's replayer finds it there
    figures = _check_settled(stack, customer, ids)
    figures.update(requests=IN_FLIGHT, spooled=len(ids), spooled_bytes=spooled_bytes)
    figures["seconds"] = round(time.monotonic() - started, 1)
    assert "replayed" in stack.edge.output()
    record_property("control_killed", figures)
    print("control killed under load:", figures)


# -- 2: the edge SIGKILLed with settles in its spool --------------------------------------------


def test_edge_killed_with_a_full_spool_replays_it_after_restart_and_twice_is_harmless(
    stack: Stack, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    customer = _customer(stack)
    marker = f"spool-{secrets.token_hex(6)}"
    started = time.monotonic()
    outage = asyncio.run(_requests_across_a_control_outage(stack, customer.secret, marker, IN_FLIGHT))
    ids = _check_answers(outage, IN_FLIGHT)
    spooled_bytes = _wait_spooled(stack, ids)

    stack.kill(stack.edge)  # SIGKILL: no shutdown, no flush
    last = stack.segments()[-1]
    with last.open("ab") as file:  # as if it died in the middle of writing one more record
        file.write(encode_record(read_spool(stack.spool_dir)[0])[:21])
    backup = tmp_path / "spool-copy"
    shutil.copytree(stack.spool_dir, backup)

    stack.start_edge()  # control still down: the spool is kept, and the edge fails closed
    assert {r.request_id for r in read_spool(stack.spool_dir)} == ids
    with httpx.Client(timeout=30) as client:
        refused = client.post(
            f"{stack.edge_url}/chat/completions",
            content=_body("x", stream=False, model="fake-1"),
            headers={"authorization": f"Bearer {customer.secret}"},
        )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "control_unavailable"

    stack.start_control()
    figures = _check_settled(stack, customer, ids)
    assert stack.edge is not None and "ignored 21 bytes after" in stack.edge.output(), "the torn record was noticed"

    # The same records once more (a crash after settling but before the segment was removed): no change.
    assert stack.edge.stop() == 0
    for segment in backup.glob("settles-*.log"):
        shutil.copy(segment, stack.spool_dir / segment.name)
    stack.start_edge()
    assert _check_settled(stack, customer, ids) == figures
    figures.update(requests=IN_FLIGHT, spooled=len(ids), spooled_bytes=spooled_bytes)
    figures["seconds"] = round(time.monotonic() - started, 1)
    record_property("edge_killed", figures)
    print("edge killed with a spool:", figures)


# -- 3: the spool holds no content and no key; a full spool refuses new completions -------------


@pytest.fixture
def small_spool_stack(tmp_path: Path) -> Iterator[Stack]:
    # Room for 10 records of 55 bytes: the 20 settles below fill it.
    yield from _stack(tmp_path, {**EDGE_ENV, "CLAUDEOPUS_SPOOL_MAX_BYTES": "550"})


def test_the_spool_holds_no_content_and_no_key_and_a_full_one_refuses_work(small_spool_stack: Stack) -> None:
    stack = small_spool_stack
    customer = _customer(stack)
    canary = f"CANARY-{secrets.token_hex(8)}"
    system = f"system-{canary}"
    outage = asyncio.run(_requests_across_a_control_outage(stack, customer.secret, canary, 20, system=system))
    assert [a.status for a in outage.answers] == [200] * 20
    ids = {a.request_id for a in outage.answers}
    deadline = time.monotonic() + 30
    while len(read_spool(stack.spool_dir)) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    spooled = b"".join(p.read_bytes() for p in stack.spool_dir.iterdir() if p.is_file())
    assert len(spooled) >= 20 * 55
    forbidden = [canary, customer.secret, UPSTREAM_KEY, stack.token, keys.hash_secret_bytes(customer.secret).hex()]
    for text in forbidden:
        assert text.encode() not in spooled
    assert keys.hash_secret_bytes(customer.secret) not in spooled
    assert canary not in stack.logs() and customer.secret not in stack.logs()

    with httpx.Client(timeout=30) as client:
        full = client.post(
            f"{stack.edge_url}/chat/completions",
            content=_body("x", stream=False, model="fake-1"),
            headers={"authorization": f"Bearer {customer.secret}"},
        )
    assert full.status_code == 503 and full.json()["error"]["code"] == "usage_spool_full"

    stack.start_control()
    target = f"127.0.0.1:{stack.control_port}"
    deadline = time.monotonic() + 30
    while stack.segments():
        assert time.monotonic() < deadline, "the spool was replayed"
        time.sleep(0.05)
    with httpx.Client(timeout=30) as client:
        again = client.post(
            f"{stack.edge_url}/chat/completions",
            content=_body("x", stream=False, model="fake-1"),
            headers={"authorization": f"Bearer {customer.secret}"},
        )
    assert again.status_code == 200, "room again once replayed"
    rows = admin.wait_for_settled(target, stack.admin_key, customer.key_name, 21)
    assert ids <= {r.request_id for r in rows} and all(r.status == SUCCEEDED for r in rows)
    assert canary not in dump_text(stack.database_url)
