"""Smoke run of the benchmark harness: ``python -m bench --quick`` starts and exercises everything.

Not a benchmark: nothing here asserts a time. It checks that every scenario ran and answered
without a single failed request, that reservations were made and settled, and that the
results were written. It never installs anything: without nginx or wrk it is skipped.
The control plane runs on the suite's database engine (CLAUDEOPUS_TEST_DATABASE).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS
from bench.tools import find_tools
from tests.support.databases import ENV, engine

REPOSITORY = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_SECONDS = 90

pytestmark = pytest.mark.skipif(
    find_tools() is None,
    reason="the benchmark smoke run needs nginx and wrk, which are not installed "
    "(apt-get install nginx-light wrk, or run `make bench` as root once)",
)


def run_quick(output: Path) -> subprocess.CompletedProcess[str]:
    postgres = os.environ[ENV] if engine() == "postgres" else "sqlite"
    argv = [sys.executable, "-m", "bench", "--quick", "--no-install", "--postgres", postgres, "--output", str(output)]
    # Its own process group: if it hangs, it and everything it started go together.
    process = subprocess.Popen(
        argv, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=SMOKE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"the smoke run took over {SMOKE_TIMEOUT_SECONDS} s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_quick_run_measures_every_scenario_without_errors(tmp_path: Path) -> None:
    done = run_quick(tmp_path)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert {cell["scenario"] for cell in results["cells"]} == {s.name for s in SCENARIOS}
    for cell in results["cells"]:
        assert cell["requests"] > 0 and not any(cell["errors"].values()), cell
    assert {cell["scenario"] for cell in results["ttfb"]} == {s.name for s in SCENARIOS if s.stream}
    for cell in results["ttfb"]:
        assert cell["requests"] > 0 and cell["errors"] == 0, cell
    # The reseller's and the key's budget: reservations were taken and all settled.
    assert len(results["budgets"]) == 2
    for budget in results["budgets"]:
        assert budget["spent"] > 0 and budget["reserved"] == 0, budget
    assert {run["process"] for run in results["rss"]} >= {"control"}
    assert results["ratios"] and results["targets"]
    table = (tmp_path / "latest.md").read_text()
    assert "## Targets" in table and "full / bare" in table
    # The floor, bare, full and serve side by side, with the ratios to the floor.
    assert "bare / floor" in table and "full / floor" in table and "serve / floor" in table
    assert "p99 serve / full" in table
