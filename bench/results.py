"""The results of a run, as plain dataclasses that serialize to the JSON file.

Example::

    results = Results(machine=machine_info(...), options={...})
    results.cells.append(Cell.of(1, "full", 16, load_result))
    Path("latest.json").write_text(results.to_json())
"""

from __future__ import annotations

import datetime
import json
import math
import urllib.parse
from dataclasses import asdict, dataclass, field

from bench.ttfb import TtfbResult
from bench.wrk import LoadResult


def _ms(value: float) -> float:
    return round(value, 3) if math.isfinite(value) else math.nan


@dataclass(frozen=True, slots=True)
class Cell:
    """One scenario at one connection count, measured by wrk (latency: whole response)."""

    workers: int
    scenario: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]

    @classmethod
    def of(cls, workers: int, scenario: str, connections: int, result: LoadResult) -> Cell:
        return cls(
            workers=workers,
            scenario=scenario,
            connections=connections,
            requests=result.requests,
            seconds=round(result.seconds, 3),
            rps=round(result.rps, 1),
            p50_ms=_ms(result.percentile_ms(50)),
            p90_ms=_ms(result.percentile_ms(90)),
            p99_ms=_ms(result.percentile_ms(99)),
            max_ms=_ms(result.percentile_ms(100)),
            errors=dict(result.errors),
        )

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True, slots=True)
class TtfbCell:
    """One streaming scenario at one connection count, measured by the asyncio client."""

    workers: int
    scenario: str
    connections: int
    requests: int
    ttfb_p50_ms: float
    ttfb_p90_ms: float
    ttfb_p99_ms: float
    stream_p50_ms: float
    stream_p99_ms: float
    errors: int

    @classmethod
    def of(cls, workers: int, scenario: str, connections: int, result: TtfbResult) -> TtfbCell:
        return cls(
            workers=workers,
            scenario=scenario,
            connections=connections,
            requests=len(result.first_byte),
            ttfb_p50_ms=_ms(result.percentile_ms(50)),
            ttfb_p90_ms=_ms(result.percentile_ms(90)),
            ttfb_p99_ms=_ms(result.percentile_ms(99)),
            stream_p50_ms=_ms(result.percentile_ms(50, whole=True)),
            stream_p99_ms=_ms(result.percentile_ms(99, whole=True)),
            errors=result.errors,
        )


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """A gateway process at the end of its scenarios: resident set now and at its peak (VmHWM)."""

    process: str
    workers: int
    rss_mb: float
    peak_mb: float


@dataclass(frozen=True, slots=True)
class RssRun:
    """Resident set of one process before and after ``requests`` more requests through it."""

    process: str
    requests: int
    before_mb: float
    after_mb: float
    peak_mb: float
    # (seconds since the start of the run, RSS in MB), about once a second.
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def growth_pct(self) -> float:
        return (self.after_mb - self.before_mb) / self.before_mb * 100.0 if self.before_mb else math.nan


@dataclass
class Results:
    machine: dict[str, object]
    options: dict[str, object]
    started: str = ""
    finished: str = ""
    cells: list[Cell] = field(default_factory=list)
    ttfb: list[TtfbCell] = field(default_factory=list)
    memory: list[ProcessMemory] = field(default_factory=list)
    rss: list[RssRun] = field(default_factory=list)
    budgets: list[dict[str, object]] = field(default_factory=list)
    # Gateway processes that logged errors (settles refused or lost, unhandled exceptions): name -> lines.
    log_errors: dict[str, int] = field(default_factory=dict)

    def cell(self, workers: int, scenario: str, connections: int) -> Cell | None:
        return next(
            (c for c in self.cells if (c.workers, c.scenario, c.connections) == (workers, scenario, connections)),
            None,
        )

    def ttfb_cell(self, workers: int, scenario: str, connections: int) -> TtfbCell | None:
        return next(
            (c for c in self.ttfb if (c.workers, c.scenario, c.connections) == (workers, scenario, connections)),
            None,
        )

    @property
    def failed_requests(self) -> int:
        return sum(c.error_count for c in self.cells) + sum(c.errors for c in self.ttfb)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["rss"] = [{**asdict(run), "growth_pct": _ms(run.growth_pct)} for run in self.rss]
        return data

    def to_json(self, extra: dict[str, object] | None = None) -> str:
        """Strict JSON: what was not measured (NaN) is null."""
        return json.dumps(_finite({**self.to_dict(), **(extra or {})}), indent=2, allow_nan=False) + "\n"


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def now() -> str:
    """The time of day in UTC, to the second (when a run started or finished)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def without_credentials(url: str) -> str:
    """A database URL fit for the results file: no user name or password."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
