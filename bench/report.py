"""Ratios, targets, and the markdown table of a run.

The ratios (full / bare relay, full / direct) matter more than the absolute numbers:
the machine is shared and absolute numbers drift, but every scenario of a run ran
interleaved with the others on the same machine.

Example::

    Path("latest.md").write_text(markdown(results))
    Path("latest.json").write_text(results.to_json({"ratios": ratios(results), "targets": targets(results)}))
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bench.results import Results
from bench.scenarios import BY_NAME, SCENARIOS

# The targets for the full path.
MIN_THROUGHPUT_OF_BARE = 0.60
MAX_ADDED_P50_MS = 0.5
MAX_ADDED_P99_MS = 2.0
MAX_TTFB_OVERHEAD_MS = 1.0
MAX_RSS_GROWTH_PCT = 10.0
MAX_RSS_MB = 150.0
# The full path's p99 under a login flood against control, over its p99 without one.
MAX_P99_UNDER_LOGIN_FLOOD = 1.20
# The edge's own cost against the minimal relay (floor): throughput at the most connections, and
# the p50 latency added at the fewest.
MIN_BARE_OF_FLOOR = 0.85
MIN_FULL_OF_FLOOR = 0.80
MAX_BARE_ADDED_P50_OVER_FLOOR_MS = 0.10
MAX_FULL_ADDED_P50_OVER_FLOOR_MS = 0.15
# ``claudeopus serve``'s p99 at the most connections, over the split deployment's (full).
MAX_SERVE_P99_OF_FULL = 2.0
NOT_MEASURED = "-"

_RATIOS = (
    ("bare / floor", "bare", "floor"),
    ("full / floor", "full", "floor"),
    ("serve / floor", "serve", "floor"),
    ("serve-workers / floor", "serve-workers", "floor"),
    ("full / bare", "full", "bare"),
    ("full / direct", "full", "direct"),
    ("full-stream / bare-stream", "full-stream", "bare-stream"),
    ("full-stream / direct-stream", "full-stream", "direct-stream"),
    ("full / full-no-budget", "full", "full-no-budget"),
    ("full-unleased / bare", "full-unleased", "bare"),
    ("full-unleased-stream / bare-stream", "full-unleased-stream", "bare-stream"),
)
# The paths whose latency over the floor is shown.
_OVER_FLOOR = ("bare", "full", "serve", "serve-workers")
# The paths the targets are checked for: the full path as configured by default, and with leases off.
_TARGET_PATHS = (("full", "full-stream", ""), ("full-unleased", "full-unleased-stream", ", leases off"))


def _ratio(a: float | None, b: float | None) -> float:
    return float(f"{a / b:.4g}") if a is not None and b else math.nan


def _diff(a: float | None, b: float | None) -> float:
    return round(a - b, 3) if a is not None and b is not None else math.nan


def _workers(results: Results) -> list[int]:
    return sorted({c.workers for c in results.cells} | {c.workers for c in results.ttfb})


def _connections(results: Results) -> list[int]:
    return sorted({c.connections for c in results.cells})


def ratios(results: Results) -> list[dict[str, object]]:
    """Per worker count and connection count: throughput ratios and the latency the gateway adds."""
    rows: list[dict[str, object]] = []
    for workers in _workers(results):
        for connections in _connections(results):

            def cell_value(name: str, attribute: str, w: int = workers, c: int = connections) -> float | None:
                cell = results.cell(w, name, c)
                return float(getattr(cell, attribute)) if cell is not None else None

            row: dict[str, object] = {"workers": workers, "connections": connections}
            for label, top, bottom in _RATIOS:
                row[label] = _ratio(cell_value(top, "rps"), cell_value(bottom, "rps"))
            row["p99 full-login-flood / full"] = _ratio(
                cell_value("full-login-flood", "p99_ms"), cell_value("full", "p99_ms")
            )
            row["p99 serve / full"] = _ratio(cell_value("serve", "p99_ms"), cell_value("full", "p99_ms"))
            row["p99 serve-workers / full"] = _ratio(
                cell_value("serve-workers", "p99_ms"), cell_value("full", "p99_ms")
            )
            for base in ("direct", "bare"):
                for percentile in ("p50", "p99"):
                    attribute = f"{percentile}_ms"
                    row[f"added {percentile} ms vs {base}"] = _diff(
                        cell_value("full", attribute), cell_value(base, attribute)
                    )
            for path in _OVER_FLOOR:
                for percentile in ("p50", "p99"):
                    attribute = f"{percentile}_ms"
                    row[f"{path}: added {percentile} ms vs floor"] = _diff(
                        cell_value(path, attribute), cell_value("floor", attribute)
                    )
            rows.append(row)
    return rows


def targets(results: Results) -> list[dict[str, object]]:
    """The issue's targets, each with what this run measured (NaN: not measured in this run)."""
    workers = 1 if 1 in _workers(results) else (_workers(results) or [0])[0]
    connections = _connections(results)
    top = 64 if 64 in connections else (connections[-1] if connections else 0)
    low = 1 if 1 in connections else (connections[0] if connections else 0)
    rows: list[dict[str, object]] = []

    def add(name: str, measured: float, limit: float, *, at_most: bool = False) -> None:
        met: bool | None = None
        if math.isfinite(measured):
            met = measured <= limit if at_most else measured >= limit
        rows.append({"target": name, "measured": measured, "limit": limit, "met": met})

    def get(name: str, c: int, attribute: str) -> float | None:
        cell = results.cell(workers, name, c)
        return float(getattr(cell, attribute)) if cell is not None else None

    def ratio(path: str, base: str, c: int, attribute: str = "rps") -> float:
        return _ratio(get(path, c, attribute), get(base, c, attribute))

    def added(path: str, base: str, c: int, attribute: str) -> float:
        return _diff(get(path, c, attribute), get(base, c, attribute))

    ttfb_low = min((c.connections for c in results.ttfb), default=0)
    direct_ttfb = results.ttfb_cell(workers, "direct-stream", ttfb_low)
    for path, stream_path, note in _TARGET_PATHS:
        if not any(c.scenario in (path, stream_path) for c in results.cells) and path != "full":
            continue
        add(f"throughput at {top} connections, {path} / bare relay", ratio(path, "bare", top), MIN_THROUGHPUT_OF_BARE)
        add(
            f"added p50 latency at {low} connection(s) over direct{note}, ms",
            added(path, "direct", low, "p50_ms"),
            MAX_ADDED_P50_MS,
            at_most=True,
        )
        add(
            f"added p99 latency at {low} connection(s) over direct{note}, ms",
            added(path, "direct", low, "p99_ms"),
            MAX_ADDED_P99_MS,
            at_most=True,
        )
        path_ttfb = results.ttfb_cell(workers, stream_path, ttfb_low)
        add(
            f"streaming TTFB p50 overhead at {ttfb_low} connection(s) over direct{note}, ms",
            _diff(
                path_ttfb.ttfb_p50_ms if path_ttfb else None,
                direct_ttfb.ttfb_p50_ms if direct_ttfb else None,
            ),
            MAX_TTFB_OVERHEAD_MS,
            at_most=True,
        )
    for path, throughput, added_p50 in (
        ("bare", MIN_BARE_OF_FLOOR, MAX_BARE_ADDED_P50_OVER_FLOOR_MS),
        ("full", MIN_FULL_OF_FLOOR, MAX_FULL_ADDED_P50_OVER_FLOOR_MS),
    ):
        add(f"throughput at {top} connections, {path} / floor", ratio(path, "floor", top), throughput)
        over_floor = added(path, "floor", low, "p50_ms")
        add(f"added p50 latency at {low} connection(s), {path} over floor, ms", over_floor, added_p50, at_most=True)
    for serve in ("serve", "serve-workers"):
        split = ratio(serve, "full", top, "p99_ms")
        add(f"p99 at {top} connections, {serve} / full (split deployment)", split, MAX_SERVE_P99_OF_FULL, at_most=True)
    for c in connections:
        flooded = get("full-login-flood", c, "p99_ms")
        if flooded is not None:
            add(
                f"full path p99 at {c} connection(s) under a login flood / without",
                ratio("full-login-flood", "full", c, "p99_ms"),
                MAX_P99_UNDER_LOGIN_FLOOD,
                at_most=True,
            )
    for run in results.rss:
        add(
            f"RSS growth of {run.process} over {run.requests:,} requests, %",
            round(run.growth_pct, 1),
            MAX_RSS_GROWTH_PCT,
            at_most=True,
        )
    peaks = [
        m
        for m in results.memory
        if m.process == "control" or (m.process.startswith(("edge-full", "edge-unleased")) and m.workers == workers)
    ]
    for process in peaks:
        add(f"peak RSS of {process.process}, MB", process.peak_mb, MAX_RSS_MB, at_most=True)
    return rows


def _num(value: float, digits: int = 2) -> str:
    if not math.isfinite(value):
        return NOT_MEASURED
    return f"{value:,.{digits}f}"


def _ratio_text(value: float) -> str:
    """Three significant digits: 0.0712, 0.00197, 1.04."""
    return f"{value:.3g}" if math.isfinite(value) else NOT_MEASURED


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return NOT_MEASURED
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _table(header: list[str], rows: Iterable[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def markdown(results: Results) -> str:
    machine, options = results.machine, results.options
    lines = [
        "# ClaudeOpus benchmark: latest run",
        "",
        f"Run {results.started} to {results.finished}, commit {machine.get('commit') or 'unknown'}.",
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('memory_gb')} GB; "
        f"{machine.get('python')}; {machine.get('platform')}; {machine.get('nginx')}; {machine.get('wrk')}; "
        f"{machine.get('database') or 'no database'}. Load average at start {machine.get('load_average_start')}, "
        f"at end {machine.get('load_average_end')} (a shared machine: compare ratios, not absolute numbers).",
        "",
        f"Per cell {options.get('duration')} s"
        + (f" or {options.get('cell_requests')} requests" if options.get("cell_requests") else "")
        + f" of wrk ({options.get('wrk_threads')} thread(s)) after {options.get('warmup')} s of warm-up; "
        "upstream: nginx on loopback with canned answers; latency is the whole response as wrk sees it.",
        "",
    ]
    for workers in _workers(results):
        lines += _throughput_table(results, workers)
    lines += _ratio_tables(results)
    lines += _ttfb_table(results)
    lines += _memory_tables(results)
    if results.budgets:
        lines += ["## Budgets of the full path after the run", ""]
        lines += _table(
            ["owner", "limit", "spent (tokens)", "reserved after the last settle"],
            ([str(b["owner"]), f"{b['limit']:,}", f"{b['spent']:,}", f"{b['reserved']:,}"] for b in results.budgets),
        )
    workers = 1 if 1 in _workers(results) else (_workers(results) or [0])[0]
    lines += [f"## Targets (full path, {workers} edge worker{'s' if workers > 1 else ''})", ""]
    lines += _table(
        ["target", "measured", "limit", "met"],
        (
            [
                str(t["target"]),
                _num(float(str(t["measured"])), 3),
                _num(float(str(t["limit"])), 2),
                {True: "yes", False: "**no**", None: "not measured"}[t["met"] if isinstance(t["met"], bool) else None],
            ]
            for t in targets(results)
        ),
    )
    if results.log_errors:
        logged = ", ".join(f"{name}: {count}" for name, count in results.log_errors.items())
        lines += [f"**Gateway processes logged errors during the run ({logged} lines).**", ""]
    if results.failed_requests:
        lines += [f"**{results.failed_requests} requests failed during the run: the numbers above are not valid.**", ""]
    return "\n".join(lines)


def _scenario_names(results: Results) -> list[str]:
    present = {c.scenario for c in results.cells}
    return [s.name for s in SCENARIOS if s.name in present]


def _throughput_table(results: Results, workers: int) -> list[str]:
    connections = _connections(results)
    header = ["scenario"]
    for c in connections:
        header += [f"{c} conn: req/s", "p50 / p99 ms"]
    rows = []
    for name in _scenario_names(results):
        row = [f"{BY_NAME[name].label} `{name}`"]
        for c in connections:
            cell = results.cell(workers, name, c)
            if cell is None:
                row += [NOT_MEASURED, NOT_MEASURED]
                continue
            flag = f" ({cell.error_count} errors)" if cell.error_count else ""
            row += [_num(cell.rps, 0) + flag, f"{_ms(cell.p50_ms)} / {_ms(cell.p99_ms)}"]
        rows.append(row)
    title = f"## Requests/s and latency, {workers} edge worker{'s' if workers > 1 else ''}"
    return [title, "", *_table(header, rows)]


def _ratio_tables(results: Results) -> list[str]:
    data = ratios(results)
    lines = ["## Ratios of requests/s (higher is better for the gateway)", ""]
    labels = [label for label, _, _ in _RATIOS]
    lines += _table(
        ["workers", "connections", *labels],
        (
            [str(r["workers"]), str(r["connections"]), *(_ratio_text(float(str(r[label]))) for label in labels)]
            for r in data
        ),
        right_from=0,
    )
    lines += ["## Latency the full path adds (ms; full minus the other, same connections)", ""]
    keys = ["added p50 ms vs direct", "added p99 ms vs direct", "added p50 ms vs bare", "added p99 ms vs bare"]
    lines += _table(
        ["workers", "connections", "p50 vs direct", "p99 vs direct", "p50 vs bare", "p99 vs bare"],
        ([str(r["workers"]), str(r["connections"]), *(_ms(float(str(r[k]))) for k in keys)] for r in data),
        right_from=0,
    )
    lines += ["## Latency added over the floor (ms; the path minus floor, same connections)", ""]
    keys = [f"{path}: added {percentile} ms vs floor" for path in _OVER_FLOOR for percentile in ("p50", "p99")]
    lines += _table(
        ["workers", "connections", *(key.replace(": added", "").replace(" ms vs floor", "") for key in keys)],
        ([str(r["workers"]), str(r["connections"]), *(_ms(float(str(r[k]))) for k in keys)] for r in data),
        right_from=0,
    )
    lines += ["## p99 of `claudeopus serve` over the split deployment's (full)", ""]
    keys = ["p99 serve / full", "p99 serve-workers / full"]
    lines += _table(
        ["workers", "connections", *keys],
        ([str(r["workers"]), str(r["connections"]), *(_ratio_text(float(str(r[k]))) for k in keys)] for r in data),
        right_from=0,
    )
    return lines


def _ttfb_table(results: Results) -> list[str]:
    if not results.ttfb:
        return []
    connections = sorted({c.connections for c in results.ttfb})
    header = ["scenario", "workers"]
    for c in connections:
        header += [f"{c} conn: TTFB p50 / p99 ms", "whole stream p50 ms"]
    rows = []
    for workers in sorted({c.workers for c in results.ttfb}):
        for scenario in SCENARIOS:
            if not any(c.scenario == scenario.name and c.workers == workers for c in results.ttfb):
                continue
            row = [f"{scenario.label} `{scenario.name}`", str(workers)]
            for c in connections:
                cell = results.ttfb_cell(workers, scenario.name, c)
                if cell is None:
                    row += [NOT_MEASURED, NOT_MEASURED]
                    continue
                flag = f" ({cell.errors} errors)" if cell.errors else ""
                row += [f"{_ms(cell.ttfb_p50_ms)} / {_ms(cell.ttfb_p99_ms)}{flag}", _ms(cell.stream_p50_ms)]
            rows.append(row)
    return [
        "## Streaming: time to first byte (asyncio client, first SSE event)",
        "",
        *_table(header, rows, right_from=1),
    ]


def _memory_tables(results: Results) -> list[str]:
    lines = ["## Memory (resident set)", ""]
    lines += _table(
        ["process", "workers", "RSS at the end, MB", "peak, MB"],
        ([m.process, str(m.workers or NOT_MEASURED), _num(m.rss_mb, 1), _num(m.peak_mb, 1)] for m in results.memory),
    )
    if results.rss:
        lines += _table(
            ["process", "requests", "RSS before, MB", "RSS after, MB", "growth", "peak, MB"],
            (
                [
                    r.process,
                    f"{r.requests:,}",
                    _num(r.before_mb, 1),
                    _num(r.after_mb, 1),
                    _num(r.growth_pct, 1) + " %",
                    _num(r.peak_mb, 1),
                ]
                for r in results.rss
            ),
        )
    return lines
