"""Load from wrk: a generated Lua script POSTs one chat-completion body, ``done()`` reports as JSON.

The script prints the whole latency histogram (microseconds -> count), so the runs
of several wrk processes (one per edge process when there are two edge workers)
merge into exact percentiles.

Example::

    script = write_script(workdir / "load.lua", body=b'{"model": "m", ...}', api_key="sk-co-...")
    result = run_load(wrk, ["http://127.0.0.1:8081/v1/chat/completions"], script, connections=16, seconds=10)
    print(result.rps, result.percentile_ms(99))
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_MARKER = "BENCH-RESULT "
# A request slower than this counts as a timeout error, not as a latency.
REQUEST_TIMEOUT_SECONDS = 10
_ERROR_KINDS = ("connect", "read", "write", "status", "timeout")

_DONE = r"""
function done(summary, latency, requests)
  local parts = {}
  for i = 1, #latency do
    local value, count = latency(i)
    parts[#parts + 1] = string.format("%d:%d", value, count)
  end
  local e = summary.errors
  io.write(string.format(
    '\n%s{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency":"%s"}\n',
    "BENCH-RESULT ", summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ",")))
end
"""

# Counting responses costs wrk a Lua call per response: only used when a request count is asked for.
_LIMIT = """
local limit = %d
local seen = 0
function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    io.stderr:write("BENCH-THREAD-DONE\\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end
"""
_THREAD_DONE = "BENCH-THREAD-DONE"

# A new key of the API key's form per request (sk-co- and 43 URL-safe characters).
_RANDOM_KEY = """
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
function request()
  local chars = {}
  for i = 1, 43 do
    local at = math.random(1, 64)
    chars[i] = alphabet:sub(at, at)
  end
  wrk.headers["Authorization"] = "Bearer sk-co-" .. table.concat(chars)
  return wrk.format()
end
"""


def lua_string(value: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise ValueError("the wrk script takes printable ASCII only")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Request:
    """The one request wrk repeats: a JSON body and the API key sent as ``Authorization: Bearer``."""

    body: bytes
    api_key: str = field(default="", repr=False)
    # A fresh made-up key (of the API key's form) on every request instead of ``api_key``.
    random_key: bool = False


def write_script(path: Path, request: Request, *, requests_per_thread: int = 0) -> Path:
    """A wrk script POSTing ``request``; with ``requests_per_thread``, each thread stops after that many
    responses and prints a line on stderr saying so."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {lua_string(request.body.decode('ascii'))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if request.api_key:
        lines.append(f'wrk.headers["Authorization"] = {lua_string("Bearer " + request.api_key)}')
    script = "\n".join(lines) + "\n"
    if request.random_key:
        script += _RANDOM_KEY
    if requests_per_thread:
        script += _LIMIT % requests_per_thread
    path.write_text(script + _DONE)
    return path


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one or several wrk processes measured; latencies in microseconds."""

    requests: int
    seconds: float
    errors: dict[str, int]
    histogram: dict[int, int] = field(repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, percent: float) -> float:
        return percentile(self.histogram, percent) / 1000.0

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "max_ms": round(self.percentile_ms(100), 3),
            "errors": dict(self.errors),
        }


def percentile(histogram: dict[int, int], percent: float) -> float:
    """The smallest recorded value with at least ``percent`` % of the samples at or below it."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    wanted = max(1, math.ceil(total * percent / 100.0))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= wanted:
            return float(value)
    return float(max(histogram))


def merge(results: Iterable[LoadResult]) -> LoadResult:
    """Several wrk processes that ran side by side: requests add up over the longest duration."""
    results = list(results)
    histogram: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for result in results:
        histogram.update(result.histogram)
        errors.update(result.errors)
    return LoadResult(
        requests=sum(r.requests for r in results),
        seconds=max((r.seconds for r in results), default=0.0),
        errors={kind: errors[kind] for kind in _ERROR_KINDS},
        histogram=dict(histogram),
    )


def parse_output(stdout: str) -> LoadResult:
    line = next((line for line in stdout.splitlines() if line.startswith(_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{stdout[-2000:]}")
    raw = json.loads(line[len(_MARKER) :])
    histogram: dict[int, int] = {}
    for pair in filter(None, raw["latency"].split(",")):
        value, count = pair.split(":")
        histogram[int(value)] = histogram.get(int(value), 0) + int(count)
    return LoadResult(
        requests=int(raw["requests"]),
        seconds=int(raw["duration_us"]) / 1e6,
        errors={kind: int(raw["errors"][kind]) for kind in _ERROR_KINDS},
        histogram=histogram,
    )


def run_load(
    wrk: str,
    urls: Sequence[str],
    request: Request,
    workdir: Path,
    *,
    connections: int,
    seconds: int,
    requests: int = 0,
    threads: int = 2,
    name: str = "load",
) -> LoadResult:
    """``connections`` spread over one wrk process per URL (never an idle one), run side by side.

    Each process runs for ``seconds``; with ``requests``, it stops as soon as each of its
    threads has had its share of responses (wrk itself only knows durations: each thread
    stops itself and says so on stderr, then we interrupt wrk, which reports and exits).
    ``name`` names its scripts: loads that run side by side need different names.
    """
    urls = list(urls)[: max(1, connections)]
    shares = [connections // len(urls) + (1 if i < connections % len(urls) else 0) for i in range(len(urls))]
    per_process_threads = max(1, threads // len(urls))
    processes: list[tuple[subprocess.Popen[str], int]] = []
    for index, (url, share) in enumerate(zip(urls, shares, strict=True)):
        thread_count = min(share, per_process_threads)
        per_thread = math.ceil(requests / len(urls) / thread_count) if requests else 0
        script = write_script(workdir / f"{name}-{index}.lua", request, requests_per_thread=per_thread)
        argv = [
            wrk,
            f"--threads={thread_count}",
            f"--connections={share}",
            f"--duration={seconds}s",
            f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
            f"--script={script}",
            url,
        ]
        popen = subprocess.Popen(  # noqa: S603 - argv built here, no shell
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        processes.append((popen, thread_count if requests else 0))
    watchers = [_StderrWatcher(process, threads) for process, threads in processes]
    results = []
    for (process, _), watcher in zip(processes, watchers, strict=True):
        assert process.stdout is not None
        stdout = process.stdout.read()  # until wrk exits (after its duration at the latest)
        process.wait()
        watcher.join(timeout=5)
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed (exit {process.returncode}): {watcher.text()[-1000:]}")
        results.append(parse_output(stdout))
    return merge(results)


class _StderrWatcher(threading.Thread):
    """Reads one wrk's stderr; once ``threads`` threads said they are done, SIGINT makes wrk report early."""

    def __init__(self, process: subprocess.Popen[str], threads: int) -> None:
        super().__init__(daemon=True)
        self._process = process
        self._threads = threads
        self._lines: list[str] = []
        self.start()

    def run(self) -> None:
        assert self._process.stderr is not None
        done = 0
        for line in self._process.stderr:
            if not line.startswith(_THREAD_DONE):
                self._lines.append(line)
                continue
            done += 1
            if done == self._threads and self._process.poll() is None:
                self._process.send_signal(signal.SIGINT)

    def text(self) -> str:
        return "".join(self._lines)
