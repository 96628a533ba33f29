"""The usage listing's query and the usage summary statement.

Listing goes through the ORM. A summary is one aggregate statement: PostgreSQL buckets
with ``date_trunc`` on UTC time and computes latency percentiles with ``percentile_cont``;
SQLite, the small embedded default, has no percentile function, so it sums in SQL and
the percentiles are interpolated here from each group's latencies, with the same
definition as ``percentile_cont``.

Example::

    query = SummaryQuery(parent_path="/1/", group_by=(UsageGroup.MODEL,), interval=UsageInterval.DAY,
                         start_time=start, end_time=end)
    summaries = await read_summaries(query, limit=10_001)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from tortoise.queryset import QuerySet

from claudeopus.control.models import UsageRecord, UsageStatus
from claudeopus.control.store.sql import Binder

PERCENTILES = (0.5, 0.95)


class UsageGroup(IntEnum):
    """Mirrors ``claudeopus.v1.UsageGroup``."""

    API_KEY = 1
    ACCOUNT = 2
    MODEL = 3


class UsageInterval(IntEnum):
    """Mirrors ``claudeopus.v1.UsageInterval``; NONE is one bucket for the whole range."""

    NONE = 0
    HOUR = 1
    DAY = 2
    MONTH = 3


# -- listing ---------------------------------------------------------------------


def usage_records(
    *,
    parent_path: str,
    api_key_id: int | None = None,
    account_id: int | None = None,
    model: str | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> QuerySet[UsageRecord]:
    """Records of the subtree at ``parent_path``; each filter given narrows it (``end_time`` exclusive)."""
    query = UsageRecord.filter(account__path__startswith=parent_path)
    if api_key_id is not None:
        query = query.filter(api_key_id=api_key_id)
    if account_id is not None:
        query = query.filter(account_id=account_id)
    if model is not None:
        query = query.filter(model=model)
    if start_time is not None:
        query = query.filter(created_at__gte=start_time)
    if end_time is not None:
        query = query.filter(created_at__lt=end_time)
    return query


# -- summaries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    """A validated summary request. ``group_by`` has no duplicates, in the caller's order; times in UTC."""

    parent_path: str
    group_by: tuple[UsageGroup, ...]
    interval: UsageInterval
    start_time: datetime
    end_time: datetime
    api_key_id: int | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """One aggregate row; dimensions not grouped by are None. Latencies in microseconds."""

    interval_start: datetime | None
    api_key_id: int | None
    account_id: int | None
    model: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    latency_p50_us: float
    latency_p95_us: float
    cost_micros: int


async def read_summaries(query: SummaryQuery, *, limit: int) -> list[UsageSummary]:
    """At most ``limit`` aggregate rows of settled usage, unordered; empty groups are left out."""
    db = UsageRecord._meta.db
    dialect = db.capabilities.dialect
    sql, params = summary_sql(dialect, query, limit=limit)
    rows = await db.execute_query_dict(sql, params)
    return [_summary(dialect, query, row) for row in rows if row["requests"]]


# The only SQL fragments ever spliced into the statement: fixed text chosen by enum.
_DIMENSIONS = {
    UsageGroup.API_KEY: ("u.api_key_id", "api_key_id"),
    UsageGroup.ACCOUNT: ("u.account_id", "account_id"),
    UsageGroup.MODEL: ("u.model", "model"),
}
_PG_TRUNC = {
    UsageInterval.HOUR: "date_trunc('hour', u.created_at AT TIME ZONE 'UTC')",
    UsageInterval.DAY: "date_trunc('day', u.created_at AT TIME ZONE 'UTC')",
    UsageInterval.MONTH: "date_trunc('month', u.created_at AT TIME ZONE 'UTC')",
}
# SQLite stores times as ISO text in UTC; strftime parses it, offset included.
_SQLITE_TRUNC = {
    UsageInterval.HOUR: "strftime('%Y-%m-%d %H:00:00', u.created_at)",
    UsageInterval.DAY: "strftime('%Y-%m-%d 00:00:00', u.created_at)",
    UsageInterval.MONTH: "strftime('%Y-%m-01 00:00:00', u.created_at)",
}


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def summary_sql(dialect: str, query: SummaryQuery, *, limit: int) -> tuple[str, list[Any]]:
    """The aggregate statement for ``dialect`` (``postgres`` or ``sqlite``) and its parameters.

    Every value is a bound parameter; only fixed fragments picked from the
    tables above are part of the text.
    """
    if dialect not in ("postgres", "sqlite"):
        raise ValueError(f"usage summaries support PostgreSQL and SQLite, not {dialect!r}")
    postgres = dialect == "postgres"
    bind = Binder(dialect)

    keys: list[tuple[str, str]] = []
    if query.interval is not UsageInterval.NONE:
        keys.append(((_PG_TRUNC if postgres else _SQLITE_TRUNC)[query.interval], "interval_start"))
    keys.extend(_DIMENSIONS[group] for group in query.group_by)
    if postgres:
        quantiles = ", ".join(str(q) for q in PERCENTILES)
        latency = f"percentile_cont(ARRAY[{quantiles}]::float8[]) WITHIN GROUP (ORDER BY u.latency_us) AS latencies"
    else:
        latency = "group_concat(u.latency_us) AS latencies"
    columns = [f"{expression} AS {alias}" for expression, alias in keys]
    columns += [
        "count(*) AS requests",
        "coalesce(sum(u.input_tokens), 0) AS input_tokens",
        "coalesce(sum(u.output_tokens), 0) AS output_tokens",
        "coalesce(sum(u.cost_micros), 0) AS cost_micros",
        latency,
    ]
    prefix = bind(_like_prefix(query.parent_path))
    where = [
        f"u.account_id IN (SELECT a.id FROM account a WHERE a.path LIKE {prefix} ESCAPE '\\')",  # noqa: S608
        f"u.created_at >= {bind(query.start_time)}",
        f"u.created_at < {bind(query.end_time)}",
        f"u.status <> {bind(int(UsageStatus.RESERVED))}",
    ]
    if query.api_key_id is not None:
        where.append(f"u.api_key_id = {bind(query.api_key_id)}")
    if query.model is not None:
        where.append(f"u.model = {bind(query.model)}")
    sql = f"SELECT {', '.join(columns)} FROM usage_record u WHERE {' AND '.join(where)}"  # noqa: S608 (fixed fragments)
    if keys:
        sql += " GROUP BY " + ", ".join(expression for expression, _ in keys)
    sql += f" LIMIT {bind(limit)}"
    return sql, bind.values


def percentile_cont(ordered: Sequence[float], fraction: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latencies(dialect: str, value: Any) -> tuple[float, float]:
    if dialect == "postgres":
        p50, p95 = value
        return float(p50), float(p95)
    ordered = sorted(int(part) for part in str(value).split(","))
    p50, p95 = (percentile_cont(ordered, q) for q in PERCENTILES)
    return p50, p95


def _interval_start(value: Any) -> datetime | None:
    """A bucket start: naive UTC from PostgreSQL, 'YYYY-MM-DD HH:MM:SS' text in UTC from SQLite."""
    if value is None:
        return None
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _summary(dialect: str, query: SummaryQuery, row: dict[str, Any]) -> UsageSummary:
    p50, p95 = _latencies(dialect, row["latencies"])
    grouped = set(query.group_by)
    return UsageSummary(
        interval_start=_interval_start(row.get("interval_start")),
        api_key_id=int(row["api_key_id"]) if UsageGroup.API_KEY in grouped else None,
        account_id=int(row["account_id"]) if UsageGroup.ACCOUNT in grouped else None,
        model=str(row["model"]) if UsageGroup.MODEL in grouped else None,
        requests=int(row["requests"]),
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        latency_p50_us=p50,
        latency_p95_us=p95,
        cost_micros=int(row["cost_micros"]),
    )
