"""``python -m bench``: the command line of the benchmark.

Example::

    python -m bench --duration 3 --connections 1,16 --workers 1
    python -m bench --quick --no-install --output /tmp/bench   # the smoke run of the test suite
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.report import markdown, ratios, targets
from bench.runner import run_benchmark
from bench.scenarios import BY_NAME, Options
from bench.tools import ToolsMissing

RESULTS_DIR = Path(__file__).resolve().parent / "results"
POSTGRES_ENV = "CLAUDEOPUS_BENCH_POSTGRES"
# Exit statuses: 0 all good, 1 the run could not be done, 3 it ran but requests failed.
EXIT_FAILED_REQUESTS = 3
EXIT_TOOLS_MISSING = 4

# --quick: a few seconds that start and exercise everything, numbers meaningless.
QUICK = Options(
    duration=5,
    cell_requests=50,
    connections=(2,),
    workers=(1,),
    ttfb_connections=(1,),
    ttfb_seconds=0.3,
    requests_for_rss=50,
    rss_connections=4,
    warmup=0,
    quick=True,
)


def _numbers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; choose from {', '.join(BY_NAME)}")
    return names


def _parser() -> argparse.ArgumentParser:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="What ClaudeOpus costs against calling the upstream directly and against a bare relay.",
    )
    parser.add_argument("--duration", type=int, help=f"seconds per cell (default {defaults.duration})")
    parser.add_argument("--connections", type=_numbers, help="connection counts, e.g. 1,16,64 (the default)")
    parser.add_argument("--workers", type=_numbers, help="edge processes per path, e.g. 1,2 (the default)")
    parser.add_argument("--ttfb-connections", type=_numbers, help="connections for stream TTFB (default 1,16)")
    parser.add_argument("--ttfb-seconds", type=float, help="seconds per TTFB cell (default: --duration)")
    parser.add_argument(
        "--requests-for-rss",
        type=int,
        help=f"requests through one full-path edge of each payload for the RSS check, 0 to skip "
        f"(default {defaults.requests_for_rss:,})",
    )
    parser.add_argument("--warmup", type=int, help=f"seconds of warm-up per scenario (default {defaults.warmup})")
    parser.add_argument("--wrk-threads", type=int, help=f"wrk threads per cell (default {defaults.wrk_threads})")
    parser.add_argument("--scenarios", type=_scenarios, help=f"subset of: {', '.join(BY_NAME)}")
    parser.add_argument(
        "--postgres",
        help=f"PostgreSQL server for the fresh database (env {POSTGRES_ENV}; default {defaults.postgres}); "
        "'sqlite' for a smoke run without PostgreSQL",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for latest.md and latest.json")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx or wrk")
    parser.add_argument("--quick", action="store_true", help="smoke run of a few seconds (numbers meaningless)")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    options = QUICK if args.quick else Options()
    options = replace(options, postgres=os.environ.get(POSTGRES_ENV, options.postgres))
    given = {
        "duration": args.duration,
        "connections": args.connections,
        "workers": args.workers,
        "ttfb_connections": args.ttfb_connections,
        "ttfb_seconds": args.ttfb_seconds,
        "requests_for_rss": args.requests_for_rss,
        "warmup": args.warmup,
        "wrk_threads": args.wrk_threads,
        "scenarios": args.scenarios,
        "postgres": args.postgres,
    }
    options = replace(options, **{k: v for k, v in given.items() if v is not None})
    if args.ttfb_seconds is None and not args.quick:
        options = replace(options, ttfb_seconds=float(options.duration))
    if args.no_install:
        options = replace(options, install=False)
    return options


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the runner, which stops every process it started


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    options = options_from(args)
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    try:
        results = run_benchmark(options, log=log)
    except ToolsMissing as error:
        print(f"bench: {error}", file=sys.stderr)
        return EXIT_TOOLS_MISSING
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    (output / "latest.md").write_text(table)
    (output / "latest.json").write_text(results.to_json({"ratios": ratios(results), "targets": targets(results)}))
    print(f"\n{table}\nbench: wrote {output / 'latest.md'} and {output / 'latest.json'}", flush=True)
    if results.failed_requests:
        print(f"bench: {results.failed_requests} requests failed; the numbers are not valid", file=sys.stderr)
        return EXIT_FAILED_REQUESTS
    return 0
