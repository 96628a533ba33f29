"""Usage of a subtree: records newest first with signed page tokens, and aggregate summaries.

Listing goes through the ORM. Summaries are one aggregate query in the database:
PostgreSQL buckets with ``date_trunc`` on UTC time and computes latency percentiles
with ``percentile_cont``; SQLite, the small embedded default, has no percentile
function, so it sums in SQL and the percentiles are interpolated here from each
group's latencies, with the same definition as ``percentile_cont``.

A summary has at most ``MAX_SUMMARY_ROWS`` rows; a request that would produce
more fails with INVALID_ARGUMENT (``FIELD_INVALID`` on ``start_time``) asking for
a narrower range, a coarser interval or fewer dimensions: the caller must change
the request, not retry it.

Example::

    rows = await summarize_usage(
        parent=reseller,
        group_by=[UsageGroup.MODEL],
        interval=UsageInterval.DAY,
        start_time=datetime(2030, 1, 1, tzinfo=UTC),
        end_time=None,  # now
        api_key_id=None,
        model="",
        now=clock(),
    )
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import FieldViolation, InvalidArgument, NotFound, Reason
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.domain.sqlbind import Binder
from claudeopus.control.models import Account, UsageRecord, UsageStatus

MAX_SUMMARY_ROWS = 10_000
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


# -- shared filters --------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    # SQLite compares the stored ISO text, so every bound must be written in UTC like the rows.
    return None if value is None else value.astimezone(UTC)


def _model_filter(model: str) -> str | None:
    return validation.model_name("model", model) if model else None


def _check_range(start_time: datetime | None, end_time: datetime | None) -> None:
    if start_time is not None and end_time is not None and end_time <= start_time:
        raise InvalidArgument.field("end_time", "must be after start_time")


# -- listing ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsagePage:
    records: list[UsageRecord]
    next_page_token: str


async def list_usage_records(
    principal: Principal,
    codec: PageTokenCodec,
    *,
    parent: Account,
    api_key_id: int | None,
    size: int,
    token: str,
    account: Account | None = None,
    model: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> UsagePage:
    """Records of ``parent``'s subtree (already checked to be the caller's), newest first.

    ``account`` (already checked to be the caller's) narrows to exactly that
    account and must lie in ``parent``'s subtree; ``start_time`` is inclusive,
    ``end_time`` exclusive. The page token is bound to the caller and every filter.
    """
    limit = page_size(size)
    model_name = _model_filter(model)
    start_time, end_time = _utc(start_time), _utc(end_time)
    _check_range(start_time, end_time)
    if account is not None and not account.path.startswith(parent.path):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "account: account not found.")
    filters = {
        "parent": parent.id,
        "key": api_key_id,
        "account": None if account is None else account.id,
        "model": model_name,
        "start": None if start_time is None else start_time.isoformat(),
        "end": None if end_time is None else end_time.isoformat(),
    }
    scope = f"usage|caller={principal.credential}|" + json.dumps(filters, sort_keys=True, separators=(",", ":"))
    query = UsageRecord.filter(account__path__startswith=parent.path)
    if api_key_id is not None:
        query = query.filter(api_key_id=api_key_id)
    if account is not None:
        query = query.filter(account_id=account.id)
    if model_name is not None:
        query = query.filter(model=model_name)
    if start_time is not None:
        query = query.filter(created_at__gte=start_time)
    if end_time is not None:
        query = query.filter(created_at__lt=end_time)
    rows, next_token = await keyset_page(query, codec, scope, token, limit, key="id", descending=True)
    return UsagePage(records=rows, next_page_token=next_token)


# -- summaries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    """A validated summary request. ``group_by`` has no duplicates, in the caller's order."""

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


def summary_query(
    *,
    parent: Account,
    group_by: Sequence[int],
    interval: int,
    start_time: datetime | None,
    end_time: datetime | None,
    api_key_id: int | None,
    model: str,
    now: datetime,
) -> SummaryQuery:
    """Validate a summary request; ``end_time`` None means ``now``."""
    groups: list[UsageGroup] = []
    for value in group_by:
        try:
            group = UsageGroup(value)
        except ValueError:
            raise InvalidArgument.field(
                "group_by", "must hold only USAGE_GROUP_API_KEY, USAGE_GROUP_ACCOUNT or USAGE_GROUP_MODEL"
            ) from None
        if group not in groups:
            groups.append(group)
    try:
        bucket = UsageInterval(interval)
    except ValueError:
        raise InvalidArgument.field(
            "interval", "must be USAGE_INTERVAL_HOUR, USAGE_INTERVAL_DAY, USAGE_INTERVAL_MONTH or unset"
        ) from None
    start = _utc(start_time)
    if start is None:
        raise InvalidArgument.field("start_time", "is required")
    if end_time is None:
        end = now.astimezone(UTC)
        if end <= start:
            raise InvalidArgument.field("start_time", "must be in the past when end_time is unset (now)")
    else:
        end = end_time.astimezone(UTC)
        _check_range(start, end)
    return SummaryQuery(
        parent_path=parent.path,
        group_by=tuple(groups),
        interval=bucket,
        start_time=start,
        end_time=end,
        api_key_id=api_key_id,
        model=_model_filter(model),
    )


async def summarize_usage(
    *,
    parent: Account,
    group_by: Sequence[int],
    interval: int,
    start_time: datetime | None,
    end_time: datetime | None,
    api_key_id: int | None,
    model: str,
    now: datetime,
) -> list[UsageSummary]:
    """Aggregate the settled usage of ``parent``'s subtree (already checked to be the caller's).

    Records still RESERVED are not counted. Rows are ordered by interval start,
    then by the grouped dimensions in the order given; groups without requests
    do not appear.
    """
    query = summary_query(
        parent=parent,
        group_by=group_by,
        interval=interval,
        start_time=start_time,
        end_time=end_time,
        api_key_id=api_key_id,
        model=model,
        now=now,
    )
    db = UsageRecord._meta.db
    dialect = db.capabilities.dialect
    sql, params = summary_sql(dialect, query, limit=MAX_SUMMARY_ROWS + 1)
    rows = await db.execute_query_dict(sql, params)
    if len(rows) > MAX_SUMMARY_ROWS:
        raise InvalidArgument(
            [
                FieldViolation(
                    "start_time",
                    f"the summary would have more than {MAX_SUMMARY_ROWS} rows; narrow the time range, "
                    "use a coarser interval or group by fewer dimensions",
                )
            ]
        )
    summaries = [_summary(dialect, query, row) for row in rows if row["requests"]]
    summaries.sort(key=lambda s: _sort_key(query, s))
    return summaries


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


def _sort_key(query: SummaryQuery, summary: UsageSummary) -> tuple[Any, ...]:
    dimensions = {
        UsageGroup.API_KEY: summary.api_key_id,
        UsageGroup.ACCOUNT: summary.account_id,
        UsageGroup.MODEL: summary.model,
    }
    return (summary.interval_start or datetime.min.replace(tzinfo=UTC), *(dimensions[g] for g in query.group_by))
