"""SummarizeUsage over 216,000 usage rows on PostgreSQL: totals exact, time reported.

The rows are seeded with one ``INSERT ... SELECT FROM generate_series`` (12 s
apart over 30 days, across two resellers' users, their keys and three models);
the expected totals come from the same integer formulas evaluated here in
Python. Elapsed times are printed and recorded as test properties (run with
``-s`` or look at the junit XML); nothing asserts on them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from claudeopus.control.domain.usage import MAX_SUMMARY_ROWS
from claudeopus.control.store.usage import SummaryQuery, UsageGroup, UsageInterval, summary_sql
from claudeopus.v1 import accounts_pb2, usage_pb2
from tests.support.clock import FakeClock
from tests.support.control_server import InProcessControl, in_process_control
from tests.support.databases import engine
from tests.support.rpc import bearer
from tests.support.rpc import resource_id as ident
from tests.support.rpc import stamp as ts

pytestmark = pytest.mark.skipif(
    engine() != "postgres",
    reason="a scale test, for PostgreSQL only (CLAUDEOPUS_TEST_DATABASE=postgres://...); "
    "SQLite is the small embedded default",
)

ROWS = 216_000
STEP_SECONDS = 12  # ROWS * STEP_SECONDS = 30 days
BASE = datetime(2030, 3, 1, tzinfo=UTC)
MODELS = ("gpt-small", "gpt-large", "embed-1")

SEED_SQL = """
INSERT INTO usage_record (
    request_id, api_key_id, account_id, model, input_tokens, output_tokens, estimated_input_tokens,
    max_output_tokens, latency_us, status, source, http_status, stream, created_at, settled_at
)
SELECT
    gen_random_uuid(),
    ($1::bigint[])[g % $3 + 1],
    ($2::bigint[])[g % $3 + 1],
    ($4::text[])[(g / 5) % 3 + 1],
    CASE WHEN g % 97 = 0 THEN 0 ELSE g % 1000 + 1 END,
    CASE WHEN g % 97 = 0 THEN 0 ELSE (g * 7) % 500 END,
    100,
    500,
    CASE WHEN g % 97 = 0 THEN 0 ELSE 1000 + (g * 7919) % 2000000 END,
    CASE WHEN g % 97 = 0 THEN 1 ELSE 2 END,
    CASE WHEN g % 97 = 0 THEN 0 ELSE 1 END,
    200,
    g % 2 = 0,
    $5::timestamptz + make_interval(secs => g * $6),
    CASE WHEN g % 97 = 0 THEN NULL ELSE $5::timestamptz + make_interval(secs => g * $6) END
FROM generate_series(1, $7) AS g
"""


@dataclass(frozen=True)
class Seeded:
    """One generated row, by the same formulas as SEED_SQL."""

    key: int
    account: int
    model: str
    at: datetime
    input_tokens: int
    output_tokens: int
    latency_us: int


def generated(keys: list[int], accounts: list[int]) -> list[Seeded]:
    """The settled rows SEED_SQL writes (every 97th row stays RESERVED and is left out)."""
    n = len(keys)
    return [
        Seeded(
            key=keys[g % n],
            account=accounts[g % n],
            model=MODELS[(g // 5) % 3],
            at=BASE + timedelta(seconds=g * STEP_SECONDS),
            input_tokens=g % 1000 + 1,
            output_tokens=(g * 7) % 500,
            latency_us=1000 + (g * 7919) % 2_000_000,
        )
        for g in range(1, ROWS + 1)
        if g % 97 != 0
    ]


def percentile_cont(ordered: list[int], fraction: float) -> float:
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def totals(rows: list[Seeded], key: Any) -> dict[Any, tuple[int, int, int, int, int]]:
    groups: dict[Any, list[Seeded]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    result = {}
    for group, members in groups.items():
        latencies = sorted(m.latency_us for m in members)
        result[group] = (
            len(members),
            sum(m.input_tokens for m in members),
            sum(m.output_tokens for m in members),
            round(percentile_cont(latencies, 0.5) * 1000),
            round(percentile_cont(latencies, 0.95) * 1000),
        )
    return result


def nanos(value: Any) -> int:
    return int(value.seconds) * 1_000_000_000 + int(value.nanos)


@dataclass
class Big:
    control: InProcessControl
    reseller_a: str
    keys: list[int]  # key ids; SEED_SQL picks keys[g % n]
    owners: list[int]  # the account of each key
    under_a: set[int]  # accounts of reseller A's subtree


@pytest.fixture
async def big(database_url: str) -> AsyncIterator[Big]:
    """Reseller A (4 users), reseller B (3 users), 2 direct users; two keys per user; ROWS rows."""
    clock = FakeClock(BASE + timedelta(days=31))
    async with in_process_control(database_url, clock=clock, free_models=()) as control:
        reseller_a = await control.new_account(control.admin.name, accounts_pb2.ROLE_RESELLER)
        reseller_b = await control.new_account(control.admin.name, accounts_pb2.ROLE_RESELLER)
        a_users = [await control.new_account(reseller_a) for _ in range(4)]
        users = a_users + [await control.new_account(reseller_b) for _ in range(3)]
        users += [await control.new_account(control.admin.name) for _ in range(2)]
        keys, owners = [], []
        for user in users:
            for _ in range(2):
                keys.append(ident((await control.new_key(user))[0]))
                owners.append(ident(user))
        connection = await asyncpg.connect(database_url)
        try:
            started = time.perf_counter()
            await connection.execute(SEED_SQL, keys, owners, len(keys), list(MODELS), BASE, STEP_SECONDS, ROWS)
            # What autovacuum leaves behind on a live table: statistics, hint bits, visibility map.
            await connection.execute("VACUUM ANALYZE usage_record")
            print(f"\nseeded {ROWS} usage rows, vacuumed and analyzed in {time.perf_counter() - started:.2f} s")
        finally:
            await connection.close()
        yield Big(control, reseller_a, keys, owners, {ident(a) for a in a_users})


async def test_summaries_over_200k_rows(big: Big, database_url: str, record_property: Any) -> None:
    control = big.control
    rows = [r for r in generated(big.keys, big.owners) if r.account in big.under_a]
    assert len(rows) > 90_000
    start, end = BASE, BASE + timedelta(days=31)
    timings: list[str] = []

    async def timed(label: str, request: usage_pb2.SummarizeUsageRequest) -> usage_pb2.SummarizeUsageResponse:
        """Call twice (first and repeated); record both elapsed times."""
        elapsed = []
        for _ in range(2):
            started = time.perf_counter()
            response = await control.usage.SummarizeUsage(request, metadata=bearer(control.admin_secret))
            elapsed.append((time.perf_counter() - started) * 1000)
        record_property(f"{label}_ms", f"{elapsed[0]:.1f} (repeated: {elapsed[1]:.1f})")
        timings.append(f"  {label}: {elapsed[0]:.1f} ms, repeated {elapsed[1]:.1f} ms, {len(response.summaries)} rows")
        return response

    def measures(s: usage_pb2.UsageSummary) -> tuple[int, int, int, int, int]:
        return s.requests, s.input_tokens, s.output_tokens, nanos(s.latency_p50), nanos(s.latency_p95)

    # Grouped by model and UTC day.
    response = await timed(
        "by_model_and_day",
        usage_pb2.SummarizeUsageRequest(
            parent=big.reseller_a,
            group_by=[usage_pb2.USAGE_GROUP_MODEL],
            interval=usage_pb2.USAGE_INTERVAL_DAY,
            start_time=ts(start),
            end_time=ts(end),
        ),
    )
    want = totals(rows, lambda r: (r.at.replace(hour=0, minute=0, second=0, microsecond=0), r.model))
    got = {(s.interval_start.ToDatetime(UTC), s.model): measures(s) for s in response.summaries}
    assert len(response.summaries) == len(want) == 30 * 3 + 1  # the last row falls at 00:00 on day 31
    assert got == want
    assert sum(s.requests for s in response.summaries) == len(rows)

    # Grouped by API key, one bucket for the whole range.
    response = await timed(
        "by_api_key",
        usage_pb2.SummarizeUsageRequest(
            parent=big.reseller_a, group_by=[usage_pb2.USAGE_GROUP_API_KEY], start_time=ts(start), end_time=ts(end)
        ),
    )
    got = {s.api_key: measures(s) for s in response.summaries}
    assert not any(s.HasField("interval_start") for s in response.summaries)
    assert got == totals(rows, lambda r: f"apiKeys/{r.key}")
    assert len(got) == 8

    print(f"SummarizeUsage over {ROWS} rows; reseller A's subtree holds {len(rows)} settled rows:")
    print("\n".join(timings))

    # Plans of the statement the server runs: A's whole month, and one of A's users over a week.
    connection = await asyncpg.connect(database_url)
    try:

        async def explain(parent: str, days: int) -> str:
            path = await connection.fetchval("SELECT path FROM account WHERE id = $1", ident(parent))
            query = SummaryQuery(
                parent_path=path,
                group_by=(UsageGroup.MODEL,),
                interval=UsageInterval.DAY,
                start_time=start,
                end_time=start + timedelta(days=days),
            )
            sql, params = summary_sql("postgres", query, limit=MAX_SUMMARY_ROWS + 1)
            plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
            return "\n".join(r[0] for r in plan)

        month_plan = await explain(big.reseller_a, 31)
        week_plan = await explain(f"accounts/{min(big.under_a)}", 7)
    finally:
        await connection.close()
    print("EXPLAIN ANALYZE, reseller A, 31 days by model and day:\n" + month_plan)
    print("EXPLAIN ANALYZE, one user of A, 7 days by model and day:\n" + week_plan)
    record_property("plan_reseller_month", month_plan)
    record_property("plan_user_week", week_plan)
