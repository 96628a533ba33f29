"""What is measured: the scenarios, the requests they send, and the options of a run.

Example::

    for scenario in SCENARIOS:
        print(scenario.name, scenario.label, scenario.stream)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from bench.upstream import MODEL
from bench.wrk import Request
from claudeopus.keys import new_secret

PathKind = Literal["direct", "floor", "bare", "full", "unleased", "serve", "serve-workers"]
# An unauthenticated flood sent alongside (see flood_request): none, one made-up key, a new one per request.
FloodKind = Literal["", "one-key", "new-keys"]
# The paths through control: as configured by default (budget leases of LEASE_SECONDS, the
# edge's default), and with leases off (CLAUDEOPUS_LEASE_SECONDS=0: each request authorized alone).
CONTROL_PATHS = ("full", "unleased")
# Paths whose requests carry a real key (the others get a well-formed key nobody checks).
SERVE_PATHS = ("serve", "serve-workers")
KEYED_PATHS = (*CONTROL_PATHS, *SERVE_PATHS)
LEASE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: str
    path: PathKind
    stream: bool
    budget: bool = False
    # Measured while bench.login_flood keeps failing logins in flight against control.
    login_flood: bool = False
    # Sent alongside, unmeasured: requests with made-up keys and large bodies crafted to be costly to
    # parse (see flood_request). The edge must refuse them from the key alone.
    flood: FloodKind = ""


SCENARIOS = (
    Scenario("direct", "(a) nginx directly", "direct", stream=False),
    Scenario("floor", "(a') minimal relay: BlackSheep, uvicorn, aiohttp, no checks", "floor", stream=False),
    Scenario("bare", "(b) bare relay: edge, control stubbed out", "bare", stream=False),
    Scenario("full", "(c) full path: key auth, budget leases, usage settle", "full", stream=False, budget=True),
    Scenario("full-no-budget", "(c') full path, no budget on the key or above it", "full", stream=False),
    Scenario("direct-stream", "(a) nginx directly, streaming", "direct", stream=True),
    Scenario("bare-stream", "(b) bare relay, streaming", "bare", stream=True),
    Scenario("full-stream", "(d) full path, streaming", "full", stream=True, budget=True),
    Scenario("full-unleased", "(e) full path, leases off (authorize each)", "unleased", stream=False, budget=True),
    Scenario("full-unleased-stream", "(e) full path, leases off, streaming", "unleased", stream=True, budget=True),
    Scenario(
        "full-login-flood",
        "(f) full path while a login flood hits control",
        "full",
        stream=False,
        budget=True,
        login_flood=True,
    ),
    Scenario(
        "full-under-flood",
        "(g) full path while one made-up key sends 650 KB crafted bodies",
        "full",
        stream=False,
        budget=True,
        flood="one-key",
    ),
    Scenario(
        "full-under-key-flood",
        "(g') full path while a new made-up key per request sends them",
        "full",
        stream=False,
        budget=True,
        flood="new-keys",
    ),
    Scenario(
        "serve",
        "(h) `claudeopus serve`: control and edge in one process on SQLite",
        "serve",
        stream=False,
        budget=True,
    ),
    Scenario(
        "serve-workers",
        "(h') `claudeopus serve` with CLAUDEOPUS_WORKERS=1: the edge in a process of its own",
        "serve-workers",
        stream=False,
        budget=True,
    ),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}

# What an SDK sends for a short chat turn: a model, one message, an output limit.
_BODY: dict[str, object] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}],
    "max_tokens": 64,
}


def body(*, stream: bool) -> bytes:
    return json.dumps({**_BODY, "stream": True} if stream else _BODY, separators=(",", ":")).encode()


# The unauthenticated flood: connections (on top of the measured ones) and its body's top-level keys.
FLOOD_CONNECTIONS = 4
FLOOD_KEYS = 60_000


def flood_request(kind: FloodKind) -> Request:
    """A made-up key (``new-keys``: a new one each request) and a 650 KB body of 60,000 top-level keys
    naming "model" twice: what a full parse, or a quadratic duplicate-key check, would spend seconds on."""
    members = ",".join(f'"k{i}":0' for i in range(FLOOD_KEYS))
    model = f'"model":"{MODEL}"'
    raw = "{" + model + ',"messages":[{"role":"user","content":"x"}],' + members + "," + model + "}"
    return Request(body=raw.encode(), api_key=new_secret(), random_key=kind == "new-keys")


def request_for(scenario: Scenario, *, budgeted_key: str, unbudgeted_key: str) -> Request:
    """The scenario's request; the direct, floor and bare paths get a well-formed key nobody checks."""
    if scenario.path not in KEYED_PATHS:
        return Request(body=body(stream=scenario.stream), api_key=new_secret())
    return Request(body=body(stream=scenario.stream), api_key=budgeted_key if scenario.budget else unbudgeted_key)


@dataclass(frozen=True, slots=True)
class Options:
    """The knobs of one run (see ``python -m bench --help``)."""

    duration: int = 10
    connections: tuple[int, ...] = (1, 16, 64)
    workers: tuple[int, ...] = (1, 2)
    ttfb_connections: tuple[int, ...] = (1, 16)
    ttfb_seconds: float = 10.0
    requests_for_rss: int = 100_000
    rss_connections: int = 64
    warmup: int = 2
    # wrk threads per cell (spread over the wrk processes); one leaves the cores to what is measured.
    wrk_threads: int = 1
    # Stop a cell after this many requests (0: run for the whole duration).
    cell_requests: int = 0
    scenarios: tuple[str, ...] = tuple(s.name for s in SCENARIOS)
    postgres: str = "postgres://postgres@127.0.0.1:5432"
    install: bool = True
    quick: bool = False
