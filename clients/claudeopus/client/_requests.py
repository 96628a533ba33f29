"""Request messages built from plain Python arguments, shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from claudeopus.v1 import accounts_pb2, api_keys_pb2, budgets_pb2, prices_pb2, usage_pb2

T = TypeVar("T")

ROLES = {"reseller": accounts_pb2.ROLE_RESELLER, "user": accounts_pb2.ROLE_USER, "admin": accounts_pb2.ROLE_ADMIN}
STATES = {"active": accounts_pb2.ACCOUNT_STATE_ACTIVE, "suspended": accounts_pb2.ACCOUNT_STATE_SUSPENDED}
SCOPES = {"inference": api_keys_pb2.SCOPE_INFERENCE, "management": api_keys_pb2.SCOPE_MANAGEMENT}
GROUPS = {
    "api_key": usage_pb2.USAGE_GROUP_API_KEY,
    "account": usage_pb2.USAGE_GROUP_ACCOUNT,
    "model": usage_pb2.USAGE_GROUP_MODEL,
}
INTERVALS = {
    "hour": usage_pb2.USAGE_INTERVAL_HOUR,
    "day": usage_pb2.USAGE_INTERVAL_DAY,
    "month": usage_pb2.USAGE_INTERVAL_MONTH,
}
METRICS = {
    "input_tokens": budgets_pb2.BUDGET_METRIC_INPUT_TOKENS,
    "output_tokens": budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS,
    "total_tokens": budgets_pb2.BUDGET_METRIC_TOTAL_TOKENS,
    "cost_micros": budgets_pb2.BUDGET_METRIC_COST_MICROS,
}
PERIODS = {
    "total": budgets_pb2.BUDGET_PERIOD_TOTAL,
    "daily": budgets_pb2.BUDGET_PERIOD_DAILY,
    "monthly": budgets_pb2.BUDGET_PERIOD_MONTHLY,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def duration(value: timedelta) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def named(table: Mapping[str, T], what: str, name: str) -> T:
    """The enum value called ``name``; an unknown name is a ValueError, never "unspecified"."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; expected one of: {', '.join(table)}") from None


def role(name: str) -> accounts_pb2.Role.ValueType:
    return named(ROLES, "role", name)


def bootstrap_admin(email: str, display_name: str, token: str) -> accounts_pb2.BootstrapAdminRequest:
    return accounts_pb2.BootstrapAdminRequest(email=email, display_name=display_name, bootstrap_token=token.strip())


def create_account(
    email: str, role_name: str, display_name: str, parent: str, request_id: str
) -> accounts_pb2.CreateAccountRequest:
    account = accounts_pb2.Account(email=email, display_name=display_name, role=role(role_name))
    return accounts_pb2.CreateAccountRequest(parent=parent, account=account, request_id=request_id)


def list_accounts(
    parent: str, page_size: int, page_token: str, role_name: str | None, state: str | None
) -> accounts_pb2.ListAccountsRequest:
    return accounts_pb2.ListAccountsRequest(
        parent=parent,
        page_size=page_size,
        page_token=page_token,
        role=role(role_name) if role_name else accounts_pb2.ROLE_UNSPECIFIED,
        state=named(STATES, "state", state) if state else accounts_pb2.ACCOUNT_STATE_UNSPECIFIED,
    )


def update_account(
    name: str, display_name: str | None, email: str | None, role_name: str | None
) -> accounts_pb2.UpdateAccountRequest:
    account = accounts_pb2.Account(name=name)
    paths: list[str] = []
    if display_name is not None:
        account.display_name, paths = display_name, [*paths, "display_name"]
    if email is not None:
        account.email, paths = email, [*paths, "email"]
    if role_name is not None:
        account.role, paths = role(role_name), [*paths, "role"]
    if not paths:
        raise ValueError("nothing to update: pass display_name, email or role")
    return accounts_pb2.UpdateAccountRequest(account=account, update_mask=field_mask_pb2.FieldMask(paths=paths))


def set_account_policy(
    name: str,
    allowed_models: Iterable[str] | None,
    deny_management_keys: bool | None,
    max_key_lifetime: timedelta | None,
    clear_max_key_lifetime: bool,
) -> accounts_pb2.SetAccountPolicyRequest:
    """Only the fields given change: ``allowed_models=[]`` allows every model again."""
    policy = accounts_pb2.AccountPolicy()
    paths: list[str] = []
    if allowed_models is not None:
        policy.allowed_models.extend(allowed_models)
        paths.append("allowed_models")
    if deny_management_keys is not None:
        policy.deny_management_keys = deny_management_keys
        paths.append("deny_management_keys")
    if max_key_lifetime is not None and clear_max_key_lifetime:
        raise ValueError("pass max_key_lifetime or clear_max_key_lifetime, not both")
    if max_key_lifetime is not None:
        policy.max_key_lifetime.FromTimedelta(max_key_lifetime)
    if max_key_lifetime is not None or clear_max_key_lifetime:
        paths.append("max_key_lifetime")
    if not paths:
        raise ValueError(
            "nothing to set: pass allowed_models, deny_management_keys, max_key_lifetime or clear_max_key_lifetime"
        )
    return accounts_pb2.SetAccountPolicyRequest(
        name=name, policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def create_api_key(
    parent: str,
    display_name: str,
    scopes: Iterable[str],
    allowed_models: Iterable[str],
    expire_time: datetime | None,
    request_id: str,
) -> api_keys_pb2.CreateApiKeyRequest:
    key = api_keys_pb2.ApiKey(
        display_name=display_name,
        scopes=[named(SCOPES, "scope", s) for s in scopes],
        allowed_models=list(allowed_models),
    )
    if expire_time is not None:
        key.expire_time.CopyFrom(timestamp(expire_time))
    return api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=key, request_id=request_id)


def update_api_key(
    name: str,
    display_name: str | None,
    scopes: Iterable[str] | None,
    allowed_models: Iterable[str] | None,
    expire_time: datetime | None,
    clear_expiry: bool,
) -> api_keys_pb2.UpdateApiKeyRequest:
    key = api_keys_pb2.ApiKey(name=name)
    paths: list[str] = []
    if display_name is not None:
        key.display_name, paths = display_name, [*paths, "display_name"]
    if scopes is not None:
        key.scopes.extend(named(SCOPES, "scope", s) for s in scopes)
        paths.append("scopes")
    if allowed_models is not None:
        key.allowed_models.extend(allowed_models)
        paths.append("allowed_models")
    if expire_time is not None:
        key.expire_time.CopyFrom(timestamp(expire_time))
        paths.append("expire_time")
    elif clear_expiry:
        paths.append("expire_time")
    if not paths:
        raise ValueError("nothing to update: pass display_name, scopes, allowed_models, expire_time or clear_expiry")
    return api_keys_pb2.UpdateApiKeyRequest(api_key=key, update_mask=field_mask_pb2.FieldMask(paths=paths))


def rotate_api_key(name: str, grace_period: timedelta | None) -> api_keys_pb2.RotateApiKeyRequest:
    request = api_keys_pb2.RotateApiKeyRequest(name=name)
    if grace_period is not None:
        request.grace_period.CopyFrom(duration(grace_period))
    return request


def list_usage_records(
    parent: str,
    api_key: str,
    account: str,
    model: str,
    start_time: datetime | None,
    end_time: datetime | None,
    page_size: int,
    page_token: str,
) -> usage_pb2.ListUsageRecordsRequest:
    request = usage_pb2.ListUsageRecordsRequest(
        parent=parent, api_key=api_key, account=account, model=model, page_size=page_size, page_token=page_token
    )
    if start_time is not None:
        request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def summarize_usage(
    start_time: datetime,
    end_time: datetime | None,
    group_by: Iterable[str],
    interval: str | None,
    parent: str,
    api_key: str,
    model: str,
) -> usage_pb2.SummarizeUsageRequest:
    request = usage_pb2.SummarizeUsageRequest(
        parent=parent,
        group_by=[named(GROUPS, "group", g) for g in group_by],
        interval=named(INTERVALS, "interval", interval) if interval else usage_pb2.USAGE_INTERVAL_UNSPECIFIED,
        api_key=api_key,
        model=model,
    )
    request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def create_price(
    parent: str, model: str, input_micros: int, output_micros: int, request_id: str
) -> prices_pb2.CreatePriceRequest:
    price = prices_pb2.Price(
        model=model, input_micros_per_million=input_micros, output_micros_per_million=output_micros
    )
    return prices_pb2.CreatePriceRequest(parent=parent, price=price, request_id=request_id)


def update_price(name: str, input_micros: int | None, output_micros: int | None) -> prices_pb2.UpdatePriceRequest:
    price = prices_pb2.Price(name=name)
    paths: list[str] = []
    if input_micros is not None:
        price.input_micros_per_million = input_micros
        paths.append("input_micros_per_million")
    if output_micros is not None:
        price.output_micros_per_million = output_micros
        paths.append("output_micros_per_million")
    if not paths:
        raise ValueError("nothing to update: pass input_micros or output_micros")
    return prices_pb2.UpdatePriceRequest(price=price, update_mask=field_mask_pb2.FieldMask(paths=paths))


def cased(table: Mapping[str, T], what: str, prefix: str, name: str) -> T:
    """Like :func:`named`, also accepting the upper-case name, bare (``COST_MICROS``) or in full
    (``BUDGET_METRIC_COST_MICROS``, as ``--json`` prints it); mixed case is still unknown."""
    key = name.removeprefix(prefix).lower() if name.isupper() else name
    if key not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of: {', '.join(table)} (or upper case)")
    return table[key]


def metric(value: str | int) -> budgets_pb2.BudgetMetric.ValueType:
    """A budget metric by name (``cost_micros``, ``COST_MICROS``) or by number, passed as is."""
    if isinstance(value, int):
        return budgets_pb2.BudgetMetric.ValueType(value)
    return cased(METRICS, "metric", "BUDGET_METRIC_", value)


def period(value: str | int) -> budgets_pb2.BudgetPeriod.ValueType:
    """A budget period by name (``monthly``, ``MONTHLY``) or by number, passed as is."""
    if isinstance(value, int):
        return budgets_pb2.BudgetPeriod.ValueType(value)
    return cased(PERIODS, "period", "BUDGET_PERIOD_", value)


def create_budget(
    parent: str, metric_value: str | int, period_value: str | int, limit: int, request_id: str
) -> budgets_pb2.CreateBudgetRequest:
    budget = budgets_pb2.Budget(metric=metric(metric_value), period=period(period_value), limit=limit)
    return budgets_pb2.CreateBudgetRequest(parent=parent, budget=budget, request_id=request_id)


def update_budget(name: str, limit: int) -> budgets_pb2.UpdateBudgetRequest:
    """Always with the mask ``limit``: without it a limit of 0 (not populated on the wire) would change nothing."""
    return budgets_pb2.UpdateBudgetRequest(
        budget=budgets_pb2.Budget(name=name, limit=limit), update_mask=field_mask_pb2.FieldMask(paths=["limit"])
    )
