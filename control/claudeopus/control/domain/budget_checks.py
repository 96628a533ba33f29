"""The rules a budget change must pass: valid fields, who may set and change it, and its ceiling.

- An account's budgets are set from above: a caller may set budgets on accounts
  strictly below it, never on its own account (that would let it raise its own
  limit). Key budgets may be set on any key of the caller's subtree, its own
  keys included.
- A budget may not be larger than a budget with the same metric and period on
  the owner's ancestors (for a key: its account and the account's ancestors)
  that the caller can read, ``BUDGET_ABOVE_PARENT``. Those budgets cap it anyway;
  the check catches a reseller promising more than it has. Budgets above the
  caller's own account are not compared: the refusal would tell their limits.
- Only the account that set a budget, or one above it, may change or remove it
  (``BUDGET_HELD_ABOVE``): a user cannot lift a cap its reseller put on its key.

Example::

    metric, period, limit = new_budget_fields(metric, period, limit)
    may_write(principal, owner)
    await check_not_above_parent(principal, owner, metric, period, limit)
"""

from __future__ import annotations

from claudeopus.control.domain.budget_owners import Owner
from claudeopus.control.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.names import ACCOUNTS, format_name
from claudeopus.control.domain.principal import Principal
from claudeopus.control.domain.reservations import COUNTER_CAP
from claudeopus.control.models import Account, Budget, BudgetMetric, BudgetPeriod

MAX_LIMIT = COUNTER_CAP


def limit_in_range(field: str, value: int) -> int:
    if not 0 <= value <= MAX_LIMIT:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_LIMIT}")
    return value


def new_budget_fields(metric: int, period: int, limit: int) -> tuple[BudgetMetric, BudgetPeriod, int]:
    """Metric, period and limit of a new budget; every bad one is reported at once."""
    violations = []
    if metric not in BudgetMetric.__members__.values():
        violations.append(
            FieldViolation("budget.metric", "must be INPUT_TOKENS, OUTPUT_TOKENS, TOTAL_TOKENS or COST_MICROS")
        )
    if period not in BudgetPeriod.__members__.values():
        violations.append(FieldViolation("budget.period", "must be TOTAL, DAILY or MONTHLY"))
    if not 0 <= limit <= MAX_LIMIT:
        violations.append(FieldViolation("budget.limit", f"must be between 0 and {MAX_LIMIT}"))
    if violations:
        raise InvalidArgument(violations)
    return BudgetMetric(metric), BudgetPeriod(period), limit


def may_write(principal: Principal, owner: Owner) -> None:
    if owner.api_key_id is None and owner.account.id == principal.account_id:
        raise PermissionDenied(
            Reason.SELF_CHANGE_DENIED, "Budgets on your own account are set by the account above you."
        )


async def may_change(principal: Principal, budget: Budget) -> None:
    setter = await Account.get_or_none(id=budget.set_by)
    if setter is None or not setter.path.startswith(principal.account_path):
        raise PermissionDenied(
            Reason.BUDGET_HELD_ABOVE, "This budget was set above you; only that account can change or remove it."
        )


async def check_not_above_parent(
    principal: Principal, owner: Owner, metric: BudgetMetric, period: BudgetPeriod, limit: int
) -> None:
    """Refuse a limit above a budget of the same metric and period higher up that the caller can read.

    Budgets on accounts above the caller's own are left out: comparing against them would let the
    caller learn their limits (from the message, or by trying one limit after another). They cap
    the owner's spending at authorize time all the same.
    """
    chain = owner.account.ancestor_ids()
    above = chain if owner.api_key_id is not None else chain[:-1]
    caps = await Budget.filter(
        account_id__in=above,
        account__path__startswith=principal.account_path,
        api_key_id__isnull=True,
        metric=metric,
        period=period,
        limit_amount__lt=limit,
    ).select_related("account")
    if caps:
        tightest = min(caps, key=lambda b: b.limit_amount)
        raise FailedPrecondition(
            Reason.BUDGET_ABOVE_PARENT,
            f"budget.limit {limit} is above {tightest.limit_amount}, the limit of the "
            f"{period.name.lower()} {metric.name.lower()} budget on {format_name(ACCOUNTS, tightest.account.id)}.",
        )
