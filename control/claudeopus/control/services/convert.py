"""Model rows to proto messages. Nothing here reads a request."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from claudeopus.control.domain.budgets import BudgetView
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, BUDGETS, PRICES, USAGE_RECORDS, format_name
from claudeopus.control.domain.prices import PriceView
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, ApiKey, Scope, UsageRecord
from claudeopus.control.store.usage import UsageSummary
from claudeopus.v1 import accounts_pb2, api_keys_pb2, budgets_pb2, prices_pb2, usage_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def account(row: Account) -> accounts_pb2.Account:
    parent_id = row.parent_id
    return accounts_pb2.Account(
        name=format_name(ACCOUNTS, row.id),
        email=row.email,
        display_name=row.display_name,
        role=accounts_pb2.Role.ValueType(row.role),
        parent=format_name(ACCOUNTS, parent_id) if parent_id else "",
        state=accounts_pb2.AccountState.ValueType(row.state),
        create_time=timestamp(row.created_at),
        policy=account_policy(row),
    )


def account_policy(row: Account) -> accounts_pb2.AccountPolicy:
    lifetime = row.policy_max_key_lifetime_seconds
    return accounts_pb2.AccountPolicy(
        allowed_models=row.policy_allowed_models or [],
        deny_management_keys=not row.policy_management_keys,
        max_key_lifetime=None if lifetime is None else duration_pb2.Duration(seconds=lifetime),
    )


def api_key(row: ApiKey, now: datetime | None = None) -> api_keys_pb2.ApiKey:
    """The key without its secret.

    ``previous_secret_expire_time`` is filled only while the secret replaced by the
    last rotation still works at ``now`` (the injected clock's time); without
    ``now`` it is left out.
    """
    previous_works = (
        now is not None
        and row.revoked_at is None
        and row.previous_expires_at is not None
        and row.previous_expires_at > now
    )
    return api_keys_pb2.ApiKey(
        name=format_name(API_KEYS, row.id),
        account=format_name(ACCOUNTS, row.account_id),
        display_name=row.display_name,
        prefix=row.prefix,
        scopes=[api_keys_pb2.Scope.ValueType(s) for s in Scope if row.has_scope(s)],
        allowed_models=row.allowed_models or [],
        create_time=timestamp(row.created_at),
        revoke_time=timestamp(row.revoked_at),
        expire_time=timestamp(row.expires_at),
        rotate_time=timestamp(row.rotated_at),
        previous_secret_expire_time=timestamp(row.previous_expires_at) if previous_works else None,
    )


def duration_us(microseconds: float) -> duration_pb2.Duration:
    """A non-negative number of microseconds (maybe fractional) as a Duration, to the nanosecond."""
    nanos = round(microseconds * 1000)
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def usage_record(row: UsageRecord) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        name=format_name(USAGE_RECORDS, row.request_id),
        request_id=str(row.request_id),
        api_key=format_name(API_KEYS, row.api_key_id),  # type: ignore[attr-defined]
        account=format_name(ACCOUNTS, row.account_id),  # type: ignore[attr-defined]
        model=row.model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        latency=duration_us(row.latency_us),
        status=usage_pb2.UsageStatus.ValueType(row.status),
        source=usage_pb2.UsageSource.ValueType(row.source),
        http_status=row.http_status,
        create_time=timestamp(row.created_at),
        settle_time=timestamp(row.settled_at),
        cost_micros=row.cost_micros,
    )


def usage_summary(row: UsageSummary) -> usage_pb2.UsageSummary:
    return usage_pb2.UsageSummary(
        api_key="" if row.api_key_id is None else format_name(API_KEYS, row.api_key_id),
        account="" if row.account_id is None else format_name(ACCOUNTS, row.account_id),
        model=row.model or "",
        interval_start=timestamp(row.interval_start),
        requests=row.requests,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        latency_p50=duration_us(row.latency_p50_us),
        latency_p95=duration_us(row.latency_p95_us),
        cost_micros=row.cost_micros,
    )


def price(view: PriceView) -> prices_pb2.Price:
    row = view.price
    return prices_pb2.Price(
        name=format_name(PRICES, row.id),
        account=format_name(ACCOUNTS, row.account_id),
        model=row.model,
        input_micros_per_million=row.input_micros_per_million,
        output_micros_per_million=row.output_micros_per_million,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        set_by=format_name(ACCOUNTS, view.set_by) if view.set_by is not None else "",
        set_above=view.set_by is None,
    )


def budget(view: BudgetView, principal: Principal) -> budgets_pb2.Budget:
    """A budget as ``principal`` may see it: who set it only when that is its own account or one below."""
    row = view.budget
    set_above = principal.is_under(row.set_by)
    return budgets_pb2.Budget(
        name=format_name(BUDGETS, row.id),
        owner=row.owner,
        metric=budgets_pb2.BudgetMetric.ValueType(row.metric),
        period=budgets_pb2.BudgetPeriod.ValueType(row.period),
        limit=row.limit_amount,
        spent=view.spent,
        reserved=view.reserved,
        remaining=view.remaining,
        period_start_time=timestamp(view.period_start),
        period_end_time=timestamp(view.period_end),
        set_by="" if set_above else format_name(ACCOUNTS, row.set_by),
        set_above=set_above,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )
