"""Budget periods: which UTC day or month a moment falls in, as a small integer.

Every counter row is keyed by ``(budget, period_index)``: 0 for TOTAL, days
since 1970-01-01 for DAILY, ``year * 12 + month - 1`` for MONTHLY. A request is
charged to the index of the moment it was authorized, so one in flight across
midnight stays in the day it started.

Example::

    index = period_index(BudgetPeriod.DAILY, datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    start, end = period_bounds(BudgetPeriod.DAILY, index)   # 2026-11-25 00:00, 2026-11-26 00:00
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from claudeopus.control.models import BudgetPeriod

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_index(period: BudgetPeriod, moment: datetime) -> int:
    utc = moment.astimezone(UTC)
    if period is BudgetPeriod.DAILY:
        return (utc.date() - _EPOCH.date()).days
    if period is BudgetPeriod.MONTHLY:
        return utc.year * 12 + utc.month - 1
    return 0


def period_bounds(period: BudgetPeriod, index: int) -> tuple[datetime | None, datetime | None]:
    """Start (inclusive) and end (exclusive) of a period; ``(None, None)`` for TOTAL."""
    if period is BudgetPeriod.DAILY:
        start = _EPOCH + timedelta(days=index)
        return start, start + timedelta(days=1)
    if period is BudgetPeriod.MONTHLY:
        year, month0 = divmod(index, 12)
        next_year, next_month0 = divmod(index + 1, 12)
        return datetime(year, month0 + 1, 1, tzinfo=UTC), datetime(next_year, next_month0 + 1, 1, tzinfo=UTC)
    return None, None
