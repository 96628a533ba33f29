"""Telling a BUDGET_EXHAUSTED refusal when the leases holding part of that budget end.

A lease is a reservation of requests not yet made: near a limit, a slice another edge holds
and does not use keeps budget from a request only until that lease ends and is returned. So
the refusal says when that is, and the edge asks again then.

Example::

    await mark_held_by_leases([result.error for result in results], now)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tortoise.expressions import Q, Subquery

from claudeopus.control.domain.errors import DomainError, ResourceExhausted
from claudeopus.control.models import Account, Budget, BudgetLease, BudgetMetric

# A lease's edge returns it when it ends; its return reaches control within this.
RETURN_GRACE = timedelta(seconds=1)
LEASES_END_KEY = "leases_end_in_ms"
_METRIC_COLUMNS = {
    BudgetMetric.INPUT_TOKENS: ("open_input_tokens",),
    BudgetMetric.OUTPUT_TOKENS: ("open_output_tokens",),
    BudgetMetric.TOTAL_TOKENS: ("open_input_tokens", "open_output_tokens"),
    BudgetMetric.COST_MICROS: ("open_cost_micros",),
}


async def mark_held_by_leases(errors: Sequence[DomainError | None], now: datetime) -> None:
    """Tell, on each BUDGET_EXHAUSTED refusal, when the leases holding part of that budget end.

    A lease is a reservation of requests not yet made: near a limit, a slice another edge
    holds and does not use keeps budget from this request only until that lease ends and is
    returned. So the refusal says when that is (``ErrorInfo.metadata["leases_end_in_ms"]``),
    and the edge asks again then, instead of refusing a request the budget can still hold.
    """
    ends: dict[int, datetime | None] = {}
    for error in errors:
        if not isinstance(error, ResourceExhausted) or error.budget_id is None:
            continue
        if error.budget_id not in ends:
            budget = await Budget.get_or_none(id=error.budget_id)
            ends[error.budget_id] = None if budget is None else await _last_lease_end(budget, now)
        end = ends[error.budget_id]
        if end is not None:
            error.metadata[LEASES_END_KEY] = str(max(0, int((end - now) / timedelta(milliseconds=1))))


async def _last_lease_end(budget: Budget, now: datetime) -> datetime | None:
    """When the last live lease that may hold part of ``budget`` ends and is back (None: there is none)."""
    # Leases not yet returned that still hold some of the budget's metric (a returned one holds
    # only its requests in flight, which a refusal does not wait for, as without leases).
    holding = [_positive(column) for column in _METRIC_COLUMNS[budget.metric]]
    query = BudgetLease.filter(
        Q(*holding, join_type="OR"),
        unlimited=False,
        requests_admitted__isnull=True,
        expires_at__gt=now - RETURN_GRACE,
    )
    if budget.api_key_id is not None:
        query = query.filter(api_key_id=budget.api_key_id)
    else:
        account = await Account.get(id=budget.account_id)
        query = query.filter(account_id__in=Subquery(Account.filter(path__startswith=account.path).values("id")))
    last = await query.order_by("-expires_at").first()
    return None if last is None else last.expires_at + RETURN_GRACE


def _positive(column: str) -> Q:
    above_zero: dict[str, Any] = {f"{column}__gt": 0}
    return Q(**above_zero)
