"""One benchmark run: start everything, measure every cell, stop everything, return the results.

All scenarios run in the same run, on the same machine, interleaved (for each connection
count, every scenario in turn), so that drift of a shared machine touches them alike and
the ratios stay meaningful even when the absolute numbers move.

Example::

    results = run_benchmark(Options(duration=3, connections=(1, 16)), log=print)
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench import gateway
from bench.login_flood import LoginFlood
from bench.machine import load_average, machine_info
from bench.procs import Process, RssSampler, memory, wait_for_grpc, wait_for_http
from bench.results import Cell, ProcessMemory, Results, RssRun, TtfbCell, now, without_credentials
from bench.scenarios import (
    BY_NAME,
    CONTROL_PATHS,
    FLOOD_CONNECTIONS,
    SERVE_PATHS,
    Options,
    Scenario,
    flood_request,
    request_for,
)
from bench.tools import Tools, ensure_tools
from bench.ttfb import run_ttfb
from bench.upstream import NginxUpstream, check_answer
from bench.wrk import LoadResult, Request, run_load

Log = Callable[[str], None]
WARMUP_CONNECTIONS = 16
CHECK_REQUESTS = 3
# Upper bound on the RSS run: a gateway slower than this many requests/s is broken anyway.
RSS_MIN_RPS = 20
# Seconds a login flood runs before its cell starts, so the cell measures it at full strength.
FLOOD_RAMP_SECONDS = 1.0


@dataclass
class _Context:
    options: Options
    tools: Tools
    workdir: Path
    log: Log
    upstream: NginxUpstream
    control: gateway.Server | None = None
    keys: gateway.Keys | None = None
    # The keys on each ``claudeopus serve`` process (by path) of the worker count being measured.
    serve_keys: dict[str, gateway.Keys] = field(default_factory=dict)
    results: Results = field(default_factory=lambda: Results(machine={}, options={}))

    def request(self, scenario: Scenario) -> Request:
        keys = self.serve_keys.get(scenario.path) if scenario.path in SERVE_PATHS else self.keys
        budgeted = keys.budgeted if keys else ""
        unbudgeted = keys.unbudgeted if keys else ""
        return request_for(scenario, budgeted_key=budgeted, unbudgeted_key=unbudgeted)


@dataclass
class _Topology:
    """The edge processes of one worker count: ``workers`` processes per (path, payload) group."""

    workers: int
    groups: dict[str, list[gateway.Server]]
    direct: dict[bool, str]

    def urls(self, scenario: Scenario) -> list[str]:
        if scenario.path == "direct":
            return [self.direct[scenario.stream]] * self.workers
        return [server.completions_url for server in self.groups[_group(scenario)]]

    def processes(self) -> list[tuple[str, Process]]:
        return [(server.process.name, server.process) for servers in self.groups.values() for server in servers]


def _group(scenario: Scenario) -> str:
    return f"{scenario.path}-{'sse' if scenario.stream else 'json'}"


def run_benchmark(options: Options, log: Log) -> Results:
    tools = ensure_tools(install=options.install)
    workdir = Path(tempfile.mkdtemp(prefix="claudeopus-bench-"))
    scenarios = [BY_NAME[name] for name in options.scenarios]
    needs_control = any(s.path in CONTROL_PATHS for s in scenarios)
    started = now()
    log(f"bench: nginx {tools.nginx}, wrk {tools.wrk}, work directory {workdir}")
    try:
        with NginxUpstream(tools.nginx, workdir / "nginx") as upstream:
            context = _Context(options=options, tools=tools, workdir=workdir, log=log, upstream=upstream)
            context.results = Results(
                machine=machine_info(tools, options.postgres if needs_control else ""),
                options={**asdict(options), "postgres": without_credentials(options.postgres)},
                started=started,
            )
            if needs_control:
                with gateway.fresh_database(options.postgres, workdir) as database_url:
                    _with_control(context, scenarios, database_url)
            else:
                _measure_all(context, scenarios, token="")
    except BaseException:
        log(f"bench: logs of the processes are kept in {workdir}")
        raise
    if context.results.log_errors:
        log(f"bench: logs of the processes are kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    context.results.finished = now()
    context.results.machine["load_average_end"] = load_average()
    return context.results


def _with_control(context: _Context, scenarios: list[Scenario], database_url: str) -> None:
    token = secrets.token_urlsafe(32)
    control = gateway.start_control(database_url, token, context.workdir)
    context.control = control

    def prepare() -> None:
        wait_for_grpc(control.process, control.address)
        context.keys = gateway.provision(control.address, context.workdir)
        context.log("bench: control ready on a fresh database; admin, accounts, keys and budgets created")

    try:
        _measure_all(context, scenarios, token, prepare)
        context.log("bench: waiting for the last settles, reading the budgets")
        assert context.keys is not None
        context.results.budgets = gateway.budget_state(control.address, context.keys)
        peak = memory(control.process.pid)
        context.results.memory.append(ProcessMemory("control", 0, round(peak.rss_mb, 1), round(peak.peak_mb, 1)))
    finally:
        control.process.stop()
        _note_log_errors(context, [control.process])


def _measure_all(
    context: _Context, scenarios: list[Scenario], token: str, prepare: Callable[[], None] | None = None
) -> None:
    """Every worker count in turn; ``prepare`` runs once, while the first edges start (control starts alongside)."""
    options = context.options
    rss_workers = 1 if 1 in options.workers else options.workers[0]
    for workers in options.workers:
        with _topology(context, scenarios, workers, token) as topology:
            if prepare is not None:
                prepare()
                prepare = None
            _check(context, topology, scenarios)
            context.log("bench: every scenario answers correctly")
            _warm_up(context, topology, scenarios)
            _cells(context, topology, scenarios)
            _ttfb(context, topology, scenarios)
            for name, process in topology.processes():
                now = memory(process.pid)
                context.results.memory.append(ProcessMemory(name, workers, round(now.rss_mb, 1), round(now.peak_mb, 1)))
            if workers == rss_workers and options.requests_for_rss and context.control is not None:
                _rss_runs(context, topology)


@contextlib.contextmanager
def _topology(context: _Context, scenarios: list[Scenario], workers: int, token: str) -> Iterator[_Topology]:
    """Start the edges the scenarios need (all at once; edges reach control lazily) and stop them after."""
    upstream = context.upstream
    groups: dict[str, list[gateway.Server]] = {}
    try:
        for group in sorted({_group(s) for s in scenarios if s.path != "direct"}):
            path, payload = group.rsplit("-", 1)
            upstream_url = upstream.sse_url if payload == "sse" else upstream.json_url
            # One ``claudeopus serve`` process whatever the worker count: it is one deployment.
            for index in range(1 if path in SERVE_PATHS else workers):
                control = context.control.address if context.control is not None else ""
                name = f"{group}-w{workers}-{index}"
                server = gateway.start_path(path, name, upstream_url, context.workdir, control=control, token=token)
                groups.setdefault(group, []).append(server)
        for servers in groups.values():
            for server in servers:
                wait_for_http(server.process, f"{server.address}/models")
        for path in SERVE_PATHS:
            for server in groups.get(f"{path}-json", []):
                context.serve_keys[path] = gateway.provision_serve(server)
        direct = {False: f"{upstream.json_url}/chat/completions", True: f"{upstream.sse_url}/chat/completions"}
        context.log(f"bench: {workers} edge worker(s) per path started")
        yield _Topology(workers=workers, groups=groups, direct=direct)
    finally:
        processes = [server.process for servers in groups.values() for server in servers]
        _stop_all(processes)
        _note_log_errors(context, processes)


def _note_log_errors(context: _Context, processes: list[Process]) -> None:
    for process in processes:
        if count := process.logged_errors():
            context.results.log_errors[process.name] = count
            context.log(f"bench: {process.name} logged {count} error line(s): {process.stderr_path}")


def _stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def _check(context: _Context, topology: _Topology, scenarios: list[Scenario]) -> None:
    """Every scenario answers correctly before it is timed (a fast wrong answer measures nothing)."""
    with httpx.Client(timeout=10) as client:
        for scenario in scenarios:
            request = context.request(scenario)
            headers = {"content-type": "application/json", "authorization": f"Bearer {request.api_key}"}
            for url in topology.urls(scenario):
                for _ in range(CHECK_REQUESTS):
                    problem = check_answer(
                        client.post(url, content=request.body, headers=headers), stream=scenario.stream
                    )
                    if problem:
                        raise RuntimeError(f"{scenario.name} at {url} answers wrongly: {problem}")


def _flooded(context: _Context, scenario: Scenario, seconds: float) -> contextlib.AbstractContextManager[object]:
    """A login flood against control for the scenarios measured under one; nothing for the others."""
    if not scenario.login_flood or context.control is None:
        return contextlib.nullcontext()
    return LoginFlood(context.control.address, context.workdir, seconds=seconds + FLOOD_RAMP_SECONDS)


def _warm_up(context: _Context, topology: _Topology, scenarios: list[Scenario]) -> None:
    if not context.options.warmup:
        return
    for scenario in scenarios:
        if scenario.login_flood:
            continue  # the same requests as its scenario without the flood, warmed up there
        run_load(
            context.tools.wrk,
            topology.urls(scenario),
            context.request(scenario),
            context.workdir,
            connections=WARMUP_CONNECTIONS,
            seconds=context.options.warmup,
            threads=context.options.wrk_threads,
        )


def _cells(context: _Context, topology: _Topology, scenarios: list[Scenario]) -> None:
    options = context.options
    for connections in options.connections:
        for scenario in scenarios:
            with (
                _flooded(context, scenario, options.duration) as flood,
                _body_flood(context, topology, scenario),
            ):
                if flood is not None:
                    time.sleep(FLOOD_RAMP_SECONDS)  # the flood is running before the cell starts
                result = run_load(
                    context.tools.wrk,
                    topology.urls(scenario),
                    context.request(scenario),
                    context.workdir,
                    connections=connections,
                    seconds=options.duration,
                    requests=options.cell_requests,
                    threads=options.wrk_threads,
                )
            if isinstance(flood, LoginFlood):
                context.log(f"bench: login flood during the cell: {flood.outcomes}")
            cell = Cell.of(topology.workers, scenario.name, connections, result)
            context.results.cells.append(cell)
            errors = f"  ERRORS {cell.errors}" if cell.error_count else ""
            context.log(
                f"w={topology.workers} c={connections:<3} {scenario.name:<15} {cell.rps:>9.1f} req/s"
                f"  p50 {cell.p50_ms:7.3f} ms  p99 {cell.p99_ms:7.3f} ms{errors}"
            )


@contextlib.contextmanager
def _body_flood(context: _Context, topology: _Topology, scenario: Scenario) -> Iterator[None]:
    """For a scenario under an unauthenticated flood: the flood runs (unmeasured) while the block does."""
    if not scenario.flood:
        yield
        return
    flooded: list[LoadResult] = []

    def flood() -> None:
        flooded.append(
            run_load(
                context.tools.wrk,
                topology.urls(scenario),
                flood_request(scenario.flood),
                context.workdir,
                connections=FLOOD_CONNECTIONS,
                seconds=1 if context.options.quick else context.options.duration,
                threads=1,
                name="flood",
            )
        )

    thread = threading.Thread(target=flood, name="bench-flood", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if flooded:
        refused = flooded[0].errors.get("status", 0)
        context.log(
            f"bench: flood alongside: {flooded[0].rps:.1f} unauthenticated req/s ({refused} refused), "
            f"p50 {flooded[0].percentile_ms(50):.3f} ms"
        )


def _ttfb(context: _Context, topology: _Topology, scenarios: list[Scenario]) -> None:
    options = context.options
    streams = [s for s in scenarios if s.stream]
    for connections in options.ttfb_connections:
        for scenario in streams:
            result = run_ttfb(topology.urls(scenario), context.request(scenario), connections, options.ttfb_seconds)
            cell = TtfbCell.of(topology.workers, scenario.name, connections, result)
            context.results.ttfb.append(cell)
            errors = f"  ERRORS {cell.errors}" if cell.errors else ""
            context.log(
                f"w={topology.workers} c={connections:<3} {scenario.name:<15} TTFB p50 {cell.ttfb_p50_ms:7.3f} ms"
                f"  p99 {cell.ttfb_p99_ms:7.3f} ms  ({cell.requests} streams){errors}"
            )


def _rss_runs(context: _Context, topology: _Topology) -> None:
    """``requests_for_rss`` more requests through one full-path edge of each payload (with and without
    leases, when measured), RSS before and after."""
    assert context.control is not None
    options = context.options
    control_pid = context.control.process.pid
    control_before = memory(control_pid)
    total = 0
    start = time.monotonic()
    control_samples: list[tuple[float, float]] = []
    for scenario in (BY_NAME[name] for name in ("full", "full-stream", "full-unleased", "full-unleased-stream")):
        servers = topology.groups.get(_group(scenario))
        if not servers:
            continue
        edge = servers[0]
        context.log(f"bench: {options.requests_for_rss} requests through {edge.process.name} for RSS")
        before = memory(edge.process.pid)
        with RssSampler([edge.process.pid, control_pid], start) as sampler:
            result = run_load(
                context.tools.wrk,
                [edge.completions_url],
                context.request(scenario),
                context.workdir,
                connections=options.rss_connections,
                seconds=max(60, options.requests_for_rss // RSS_MIN_RPS),
                requests=options.requests_for_rss,
                threads=options.wrk_threads,
            )
        after = memory(edge.process.pid)
        total += result.requests
        control_samples += sampler.samples[control_pid]
        context.results.rss.append(
            RssRun(
                process=edge.process.name,
                requests=result.requests,
                before_mb=round(before.rss_mb, 1),
                after_mb=round(after.rss_mb, 1),
                peak_mb=round(after.peak_mb, 1),
                samples=sampler.samples[edge.process.pid],
            )
        )
        if result.error_count:
            context.log(f"bench: RSS run had failed requests: {result.errors}")
    control_after = memory(control_pid)
    context.results.rss.append(
        RssRun(
            process="control",
            requests=total,
            before_mb=round(control_before.rss_mb, 1),
            after_mb=round(control_after.rss_mb, 1),
            peak_mb=round(control_after.peak_mb, 1),
            samples=control_samples,
        )
    )
