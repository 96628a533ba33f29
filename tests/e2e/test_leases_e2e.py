"""Budget leases end to end (CLAUDEOPUS_LEASE_SECONDS): real control and edges, the openai SDK.

With leases on, an edge admits a key's requests from a slice of its budgets without asking
control. These tests check what must still hold: every request is billed exactly, in one
row; spending never passes a limit, also with two edges leasing from one budget; a lease
nobody uses any more is given back; a revocation reaches a leasing edge within the lease's
time; and an edge killed while holding a lease leaves nothing held and nothing uncharged —
restarted, exactly one row per request, as without leases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from claudeopus.v1 import budgets_pb2, usage_pb2
from tests.support import admin
from tests.support.databases import fresh_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.manager import Manager
from tests.support.prices import serve_fake_models
from tests.support.processes import Process, start_control, start_edge

OUTPUT = budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS
SUCCEEDED = usage_pb2.USAGE_STATUS_SUCCEEDED
EXPIRED = usage_pb2.USAGE_STATUS_EXPIRED
REPORTED = usage_pb2.USAGE_SOURCE_REPORTED
LEASE_SECONDS = 1.0
MAX_TOKENS = 5
# Control leases at most 1/64 of a budget's headroom, and only two requests' worth or more.
LEASE_SHARE = 64
SWEEP_TIMEOUT_SECONDS = 2


@dataclass
class Stack:
    log_dir: Path
    token: str
    control_port: int
    upstream: FakeUpstream
    upstream_url: str
    admin_key: str = ""
    processes: list[Process] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    def start_edge(self, name: str, lease_seconds: float = LEASE_SECONDS) -> tuple[Process, str]:
        env = {"CLAUDEOPUS_LEASE_SECONDS": str(lease_seconds)}
        process, port = start_edge(self.control_port, self.upstream_url, self.token, self.log_dir, name=name, env=env)
        self.processes.append(process)
        return process, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("leases")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    env = {"CLAUDEOPUS_RESERVATION_TIMEOUT": str(SWEEP_TIMEOUT_SECONDS), "CLAUDEOPUS_SWEEP_INTERVAL": "0.5"}
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        control, port = start_control(url, token, log_dir, "control-leases", env=env)
        built = Stack(log_dir, token, port, upstream, upstream_server.url, processes=[control])
        try:
            boot = admin.bootstrap(built.target, log_dir)
            serve_fake_models(built.target, boot.secret)  # only priced models are served
            built.admin_key = boot.secret
            yield built
        finally:
            for process in reversed(built.processes):
                process.stop()


@pytest.fixture(scope="module")
def edges(stack: Stack) -> list[str]:
    return [stack.start_edge(name)[1] for name in ("lease-edge-a", "lease-edge-b")]


@pytest.fixture
def manager(stack: Stack) -> Iterator[Manager]:
    with_manager = Manager(stack.target, stack.admin_key)
    try:
        yield with_manager
    finally:
        with_manager.close()


async def _ask(client: openai.AsyncOpenAI, marker: str, *, stream: bool, model: str = "fake-1") -> int:
    """One completion; its HTTP status (200, or the refusal's)."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": marker}]
    try:
        if stream:
            chunks = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=MAX_TOKENS, stream=True
            )
            async for _ in chunks:
                pass
        else:
            await client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS)
    except openai.APIStatusError as error:
        return error.status_code
    return 200


async def _many(urls: list[str], secret: str, count: int, *, concurrent: bool, model: str = "fake-1") -> list[int]:
    marker = f"lease-{secrets.token_hex(6)}"
    clients = [openai.AsyncOpenAI(base_url=url, api_key=secret, max_retries=0, timeout=60) for url in urls]
    try:
        calls = [_ask(clients[i % len(clients)], marker, stream=i % 2 == 0, model=model) for i in range(count)]
        if concurrent:
            return list(await asyncio.gather(*calls))
        return [await call for call in calls]
    finally:
        for client in clients:
            await client.close()


def _until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _committed(manager: Manager, budget: str) -> int:
    """What a budget holds or has charged (spent + reserved): the sweeper's expiries leave it unchanged."""
    spent, reserved, _ = manager.counters(budget)
    return spent + reserved


def test_leased_requests_are_billed_exactly_and_the_lease_is_given_back(
    edges: list[str], manager: Manager, stack: Stack
) -> None:
    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, OUTPUT, 100_000)
    statuses = asyncio.run(_many(edges[:1], secret, 30, concurrent=False))
    assert statuses == [200] * 30
    _, reserved, _ = manager.counters(budget)
    lease = (100_000 - MAX_TOKENS) // (LEASE_SHARE * MAX_TOKENS) * MAX_TOKENS
    assert 0 < reserved <= 2 * lease, "the edge holds a lease (and perhaps its successor) while it is idle"
    records = manager.settled(key_name, 30)
    assert all((r.status, r.source, r.output_tokens) == (SUCCEEDED, REPORTED, MAX_TOKENS) for r in records)
    assert len({r.request_id for r in records}) == 30
    _until(lambda: manager.counters(budget)[1] == 0)  # the lease's time is up: given back
    assert manager.counters(budget) == (30 * MAX_TOKENS, 0, 100_000 - 30 * MAX_TOKENS)


def test_two_leasing_edges_never_pass_a_limit(edges: list[str], manager: Manager, stack: Stack) -> None:
    """A budget of 256 requests' worth, 400 requests at once over two edges that lease from it."""
    limit = 256 * MAX_TOKENS
    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, OUTPUT, limit)
    asyncio.run(_many(edges, secret, 2, concurrent=False))  # each edge authorizes once and asks for a lease
    time.sleep(0.2)
    statuses = asyncio.run(_many(edges, secret, 400, concurrent=True))
    admitted = statuses.count(200) + 2
    assert set(statuses) <= {200, 429}
    records = manager.settled(key_name, admitted)
    _until(lambda: manager.counters(budget)[1] == 0)
    spent, reserved, _ = manager.counters(budget)
    assert spent == sum(r.output_tokens for r in records) == admitted * MAX_TOKENS
    assert spent <= limit and reserved == 0
    # Exact, as without leases: a request refused while a slice the other edge holds unused
    # keeps the rest of the budget is asked again once that lease has been returned.
    assert admitted == 256, f"{admitted} admitted of a budget for 256"


def test_a_revocation_holds_on_a_leasing_edge_when_revoke_returns(edges: list[str], stack: Stack) -> None:
    manager = Manager(stack.target, stack.admin_key)
    try:
        key_name, secret = manager.user_key()
        assert asyncio.run(_many(edges[:1], secret, 3, concurrent=False)) == [200] * 3
        time.sleep(0.1)  # the edge holds a lease by now
        started = time.monotonic()
        admin.call(stack.target, stack.admin_key, lambda c: c.revoke_api_key(key_name))
        took = time.monotonic() - started
        assert asyncio.run(_many(edges[:1], secret, 3, concurrent=False)) == [401] * 3
        assert took < LEASE_SECONDS + 1.0, f"revoke waited {took:.2f} s for the lease to end"
        print(f"\nrevoke with a live lease returned after {took:.2f} s")
    finally:
        manager.close()


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "never-restarted"])
def test_an_edge_killed_with_a_lease_leaves_nothing_held_and_nothing_uncharged(
    manager: Manager, stack: Stack, restarted: bool
) -> None:
    """Four requests in flight (one authorized, three from a lease) when the edge is SIGKILLed.

    The authorized one is expired with its reservation, as without leases. Restarted on its
    spool directory, the edge recovers its lease journal: each leased request gets its own
    row, expired with its reservation, exactly as if it had been authorized alone, and the
    rest of the lease is released. Never restarted, the lease (5 s here) is closed by the
    sweeper once the reservation timeout has passed after it ended: all it held is charged,
    conservatively, as one row.

    The sweeper runs all along (2 s reservation timeout): the authorized request's reservation,
    and each recovered row (dated when its request was admitted), may be expired at any moment,
    which moves what it holds from reserved to spent. So what the budget holds is checked as
    spent + reserved, which the sweeper does not change; and the restarted edge's lease is long
    enough that the sweeper cannot close it before the restarted edge recovers it.
    """
    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, OUTPUT, 100_000)
    name = f"lease-edge-killed-{restarted}"
    lease_seconds = 30.0 if restarted else 5.0
    edge, url = stack.start_edge(name, lease_seconds=lease_seconds)
    body = {"model": "fake-hold", "messages": [{"role": "user", "content": "held"}], "max_tokens": MAX_TOKENS}
    headers = {"authorization": f"Bearer {secret}"}

    def held_request() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=30)

    def holding() -> int:
        return sum(1 for r in list(stack.upstream.received) if r.body and r.body.get("messages") == body["messages"])

    before = holding()
    stack.upstream.release.clear()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pool.submit(held_request)
            _until(lambda: manager.counters(budget)[1] > MAX_TOKENS)  # authorized, and a lease on top
            for _ in range(3):
                pool.submit(held_request)
            _until(lambda: holding() == before + 4)
            held = _committed(manager, budget)
            edge.popen.kill()  # SIGKILL: nothing settled, the lease never given back
            edge.popen.wait(10)
    finally:
        stack.upstream.release.set()
    lease = (100_000 - MAX_TOKENS) // (LEASE_SHARE * MAX_TOKENS) * MAX_TOKENS
    assert held == MAX_TOKENS + lease
    journal = stack.log_dir / f"{name}.spool" / "leases-000000000001.journal"
    assert journal.exists()
    if restarted:
        again, again_url = stack.start_edge(name, lease_seconds=lease_seconds)
        _until(lambda: not journal.exists(), timeout=30)
        assert _committed(manager, budget) == 4 * MAX_TOKENS, "the lease's unused rest was released at once"
        records = manager.settled(key_name, 4, timeout=30)
        assert [r.output_tokens for r in records] == [MAX_TOKENS] * 4, "one row per request, as without leases"
        assert asyncio.run(_many([again_url], secret, 3, concurrent=False)) == [200] * 3  # leases again
        again.stop()  # a clean stop gives its leases back and leaves no journal behind
        assert list(journal.parent.glob("leases-*.journal")) == []
        charged = 4 * MAX_TOKENS + 3 * MAX_TOKENS
        records = manager.settled(key_name, 7, timeout=30)
        assert sum(r.status == SUCCEEDED for r in records) == 3
    else:
        records = manager.settled(key_name, 2, timeout=30)
        assert sorted(r.output_tokens for r in records) == [MAX_TOKENS, lease]
        charged = held
    assert sum(r.status == EXPIRED for r in records) == len(records) - (3 if restarted else 0)
    assert manager.counters(budget) == (charged, 0, 100_000 - charged), "everything it held is charged, once"


def test_a_leasing_edge_fails_closed_soon_after_control_goes_away(tmp_path: Path) -> None:
    """Control SIGKILLed under a leasing edge: the first settle that cannot reach it drops every lease."""
    token = secrets.token_urlsafe(32)
    with fresh_database(tmp_path) as url, ThreadedServer(FakeUpstream()) as upstream_server:
        control, port = start_control(url, token, tmp_path, "control-doomed")
        edge: Process | None = None
        try:
            target = f"127.0.0.1:{port}"
            boot = admin.bootstrap(target, tmp_path)
            serve_fake_models(target, boot.secret)  # only priced models are served
            manager = Manager(target, boot.secret)
            try:
                _, secret = manager.user_key()
            finally:
                manager.close()
            env = {"CLAUDEOPUS_LEASE_SECONDS": "30", "CLAUDEOPUS_CONTROL_TIMEOUT": "1"}
            edge, edge_port = start_edge(port, upstream_server.url, token, tmp_path, name="edge-doomed", env=env)
            url_ = f"http://127.0.0.1:{edge_port}/v1"
            assert asyncio.run(_many([url_], secret, 5, concurrent=False)) == [200] * 5
            control.popen.kill()
            control.popen.wait(10)
            killed = time.monotonic()
            statuses: list[int] = []
            while not statuses or statuses[-1] == 200:
                statuses += asyncio.run(_many([url_], secret, 1, concurrent=False))
                assert time.monotonic() - killed < 5, f"still admitted long after control died: {statuses}"
            assert statuses[-1] == 503, statuses
            assert asyncio.run(_many([url_], secret, 3, concurrent=False)) == [503] * 3
            print(f"\ncontrol killed under a leasing edge: {statuses.count(200)} more admitted, then 503")
        finally:
            if edge is not None:
                edge.stop()
            control.stop()
