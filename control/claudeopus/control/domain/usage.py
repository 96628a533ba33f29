"""Usage of a subtree: records newest first with signed page tokens, and aggregate summaries.

This module checks the requests and the caller's scope; the queries and the summary
statement are in :mod:`claudeopus.control.store.usage`.

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import FieldViolation, InvalidArgument, NotFound, Reason
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, UsageRecord
from claudeopus.control.store.usage import (
    SummaryQuery,
    UsageGroup,
    UsageInterval,
    UsageSummary,
    read_summaries,
    usage_records,
)

MAX_SUMMARY_ROWS = 10_000


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
    query = usage_records(
        parent_path=parent.path,
        api_key_id=api_key_id,
        account_id=None if account is None else account.id,
        model=model_name,
        start_time=start_time,
        end_time=end_time,
    )
    rows, next_token = await keyset_page(query, codec, scope, token, limit, key="id", descending=True)
    return UsagePage(records=rows, next_page_token=next_token)


# -- summaries -------------------------------------------------------------------


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
    summaries = await read_summaries(query, limit=MAX_SUMMARY_ROWS + 1)
    if len(summaries) > MAX_SUMMARY_ROWS:
        raise InvalidArgument(
            [
                FieldViolation(
                    "start_time",
                    f"the summary would have more than {MAX_SUMMARY_ROWS} rows; narrow the time range, "
                    "use a coarser interval or group by fewer dimensions",
                )
            ]
        )
    summaries.sort(key=lambda s: _sort_key(query, s))
    return summaries


def _sort_key(query: SummaryQuery, summary: UsageSummary) -> tuple[Any, ...]:
    dimensions = {
        UsageGroup.API_KEY: summary.api_key_id,
        UsageGroup.ACCOUNT: summary.account_id,
        UsageGroup.MODEL: summary.model,
    }
    return (summary.interval_start or datetime.min.replace(tzinfo=UTC), *(dimensions[g] for g in query.group_by))
