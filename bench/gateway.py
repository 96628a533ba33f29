"""The gateway under test: a fresh database, ``claudeopus control``, edges, and the accounts, keys and budgets.

The full path is the product as shipped: ``claudeopus control`` on its own database and
``claudeopus edge`` processes, a bootstrapped admin, a reseller with a user below it whose
key carries a budget, under the reseller's own budget (so every request reserves in
both and settles in both), and a second user whose key has no budget anywhere above it.

Example::

    with fresh_database("postgres://postgres@127.0.0.1:5432", workdir) as url:
        control = start_control(url, token, workdir)
        wait_for_grpc(control.process, control.address)
        keys = provision(control.address, workdir)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import grpc

from bench.login_flood import FLOOD_CONTROL_ENV
from bench.procs import Process, free_port
from bench.scenarios import LEASE_SECONDS
from bench.upstream import MODEL
from claudeopus.cli.servers import FIRST_START_FILE
from claudeopus.client import ClaudeOpusClient
from claudeopus.control.settings import DEFAULT_BOOTSTRAP_TOKEN_FILE
from claudeopus.v1 import budgets_pb2, budgets_pb2_grpc

# Far more than any run can spend (about 190 tokens reserved and 21 settled per request);
# the key's budget stays below the reseller's, as the rules require.
RESELLER_LIMIT = 10**15
KEY_LIMIT = 10**14
SETTLE_DRAIN_SECONDS = 30.0
FIRST_START_TIMEOUT_SECONDS = 30.0


def claudeopus_argv() -> list[str]:
    """The ``claudeopus`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "claudeopus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "claudeopus.cli.main"]


@contextmanager
def fresh_database(postgres: str, workdir: Path) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server ``postgres`` (dropped afterwards);
    ``sqlite`` gives a file in ``workdir`` instead (for smoke runs only)."""
    if postgres == "sqlite":
        yield f"sqlite://{workdir / 'bench.db'}"
        return
    server = postgres.rstrip("/")
    name = f"claudeopus_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_statement(server, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(_admin_statement(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin_statement(server: str, statement: str) -> None:
    connection = await asyncpg.connect(server + "/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def server_version(postgres: str) -> str:
    if postgres == "sqlite":
        return "sqlite"

    async def ask() -> str:
        connection = await asyncpg.connect(postgres.rstrip("/") + "/postgres")
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    return "PostgreSQL " + asyncio.run(ask())


@dataclass(frozen=True, slots=True)
class Server:
    """A started gateway process and where it listens (``host:port`` for control, a base URL for edges)."""

    process: Process
    address: str

    @property
    def completions_url(self) -> str:
        return f"{self.address}/chat/completions"


def start_control(database_url: str, token: str, log_dir: Path) -> Server:
    """``claudeopus control`` on ``database_url`` (migrations run at start); not waited for.

    It starts in ``log_dir``, where it writes its bootstrap token; logins are not limited per
    address or email (see :mod:`bench.login_flood`).
    """
    target = f"127.0.0.1:{free_port()}"
    env = {"CLAUDEOPUS_SERVICE_TOKEN": token, "CLAUDEOPUS_DATABASE_URL": database_url, **FLOOD_CONTROL_ENV}
    argv = [*claudeopus_argv(), "control", "--grpc", target, "--log-level", "warning"]
    return Server(Process("control", argv, env, log_dir), target)


def start_path(path: str, name: str, upstream_url: str, log_dir: Path, *, control: str, token: str) -> Server:
    """The process of a scenario's path (not ``direct``); not waited for. ``control``: its address, for
    the paths through it (``full``, ``unleased``)."""
    if path == "floor":
        return start_floor(name, upstream_url, log_dir)
    if path == "bare":
        return start_bare_edge(f"edge-{name}", upstream_url, log_dir)
    if path in ("serve", "serve-workers"):
        return start_serve(name, upstream_url, log_dir, edge_workers=1 if path == "serve-workers" else 0)
    lease_seconds = 0.0 if path == "unleased" else LEASE_SECONDS
    return start_edge(f"edge-{name}", control, upstream_url, token, log_dir, lease_seconds=lease_seconds)


def start_edge(
    name: str, control_target: str, upstream_url: str, token: str, log_dir: Path, *, lease_seconds: float = 0.0
) -> Server:
    """``claudeopus edge``, the product's own command; not waited for. ``lease_seconds``: budget leases on."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        *claudeopus_argv(),
        "edge",
        "--control",
        control_target,
        "--http",
        address,
        "--upstream-url",
        upstream_url,
        "--log-level",
        "warning",
    ]
    # Each edge locks its own usage spool directory.
    env = {
        "CLAUDEOPUS_SERVICE_TOKEN": token,
        "CLAUDEOPUS_SPOOL_DIR": str(log_dir / f"{name}.spool"),
        "CLAUDEOPUS_LEASE_SECONDS": str(lease_seconds),
    }
    return Server(Process(name, argv, env, log_dir), f"http://{address}/v1")


def start_bare_edge(name: str, upstream_url: str, log_dir: Path) -> Server:
    """The edge app with control stubbed out (:mod:`bench.bare_edge`); not waited for."""
    return _start_bench_module(name, "bench.bare_edge", upstream_url, log_dir)


def start_floor(name: str, upstream_url: str, log_dir: Path) -> Server:
    """The minimal relay (:mod:`bench.floor`); not waited for."""
    return _start_bench_module(name, "bench.floor", upstream_url, log_dir)


def _start_bench_module(name: str, module: str, upstream_url: str, log_dir: Path) -> Server:
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", module, "--http", address, "--upstream-url", upstream_url]
    # The child starts in the log directory: put the repository (bench's parent) on its path.
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "CLAUDEOPUS_SPOOL_DIR": str(log_dir / f"{name}.spool")}
    return Server(Process(name, argv, env, log_dir), f"http://{address}/v1")


def start_serve(name: str, upstream_url: str, log_dir: Path, *, edge_workers: int = 0) -> Server:
    """``claudeopus serve`` (control and edge in one process; with ``edge_workers``, that many edge
    processes beside it) on a new SQLite database in a directory of its own, where it writes its
    first-start file; not waited for."""
    directory = log_dir / name
    directory.mkdir()
    address = f"127.0.0.1:{free_port()}"
    argv = [
        *claudeopus_argv(),
        "serve",
        "--http",
        address,
        "--grpc",
        f"127.0.0.1:{free_port()}",
        "--database-url",
        f"sqlite://{directory / 'serve.db'}",
        "--upstream-url",
        upstream_url,
        "--log-level",
        "warning",
    ]
    env = {"CLAUDEOPUS_SPOOL_DIR": str(directory / "spool"), "CLAUDEOPUS_WORKERS": str(edge_workers)}
    env.update(FLOOD_CONTROL_ENV)
    return Server(Process(name, argv, env, directory), f"http://{address}/v1")


def serve_control_target(serve: Server) -> str:
    """The gRPC target of a ``claudeopus serve`` process (its ``--grpc``)."""
    argv = serve.process.popen.args
    assert isinstance(argv, list)
    return str(argv[argv.index("--grpc") + 1])


@dataclass(frozen=True, slots=True)
class Keys:
    admin_key: str = field(repr=False)
    # A user's key with a budget, under a reseller with a budget.
    budgeted: str = field(repr=False)
    # A user's key with no budget on it or anywhere above it.
    unbudgeted: str = field(repr=False)
    budgets: tuple[str, ...]


def provision(control_target: str, control_dir: Path) -> Keys:
    """Bootstrap the admin (with the token control wrote in ``control_dir``), then the accounts, keys and budgets."""
    token = (control_dir / DEFAULT_BOOTSTRAP_TOKEN_FILE).read_text().strip()
    return asyncio.run(_provision(control_target, token))


def provision_serve(serve: Server) -> Keys:
    """The accounts, keys and budgets on a ``claudeopus serve`` process, as the admin it bootstrapped
    (whose key its first start wrote to a file, stdout not being a terminal)."""
    first_start = serve.process.stdout_path.parent / FIRST_START_FILE
    deadline = time.monotonic() + FIRST_START_TIMEOUT_SECONDS  # written just after the edge listens
    while not first_start.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = first_start.read_text()
    admin_key = next(line.split(":", 1)[1].strip() for line in text.splitlines() if "admin management key" in line)
    return asyncio.run(_provision_as(serve_control_target(serve), admin_key))


async def _provision(target: str, token: str) -> Keys:
    async with ClaudeOpusClient(target) as anonymous:
        admin = await anonymous.bootstrap_admin("admin@bench.invalid", "Benchmark admin", token=token)
    return await _provision_as(target, admin.secret)


async def _provision_as(target: str, admin_key: str) -> Keys:
    async with ClaudeOpusClient(target, key=admin_key) as client:
        reseller = await client.create_account(email="reseller@bench.invalid", role="reseller")
        user = await client.create_account(email="user@bench.invalid", role="user", parent=reseller.name)
        budgeted = await client.create_api_key(parent=user.name, display_name="bench, budgets")
        loner = await client.create_account(email="no-budget@bench.invalid", role="user")
        unbudgeted = await client.create_api_key(parent=loner.name, display_name="bench, no budget")
        # Only priced models are served: the benchmark's model is priced (for free) on the root.
        await client.create_price(model=MODEL, input_micros=0, output_micros=0)
    names = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = budgets_pb2_grpc.BudgetServiceStub(channel)
        for owner, limit in ((reseller.name, RESELLER_LIMIT), (budgeted.api_key.name, KEY_LIMIT)):
            budget = budgets_pb2.Budget(
                metric=budgets_pb2.BUDGET_METRIC_TOTAL_TOKENS, period=budgets_pb2.BUDGET_PERIOD_MONTHLY, limit=limit
            )
            request = budgets_pb2.CreateBudgetRequest(parent=owner, budget=budget)
            created = await stub.CreateBudget(request, metadata=_bearer(admin_key), timeout=10)
            names.append(created.name)
    return Keys(admin_key=admin_key, budgeted=budgeted.secret, unbudgeted=unbudgeted.secret, budgets=tuple(names))


def budget_state(control_target: str, keys: Keys) -> list[dict[str, object]]:
    """Each budget's owner, spent and reserved, once the settles in flight have landed (reserved 0)."""
    return asyncio.run(_budget_state(control_target, keys))


def _bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def _budget_state(target: str, keys: Keys) -> list[dict[str, object]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = budgets_pb2_grpc.BudgetServiceStub(channel)
        deadline = asyncio.get_running_loop().time() + SETTLE_DRAIN_SECONDS
        while True:
            budgets = [
                await stub.GetBudget(
                    budgets_pb2.GetBudgetRequest(name=name), metadata=_bearer(keys.admin_key), timeout=10
                )
                for name in keys.budgets
            ]
            if all(b.reserved == 0 for b in budgets) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
    return [
        {"owner": b.owner, "limit": b.limit, "spent": b.spent, "reserved": b.reserved, "remaining": b.remaining}
        for b in budgets
    ]
