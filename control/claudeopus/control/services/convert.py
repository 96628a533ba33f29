"""Model rows to proto messages. Nothing here reads a request."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, USAGE_RECORDS, format_name
from claudeopus.control.models import Account, ApiKey, Scope, UsageRecord
from claudeopus.v1 import accounts_pb2, api_keys_pb2, usage_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def account(row: Account) -> accounts_pb2.Account:
    parent_id = row.parent_id  # type: ignore[attr-defined]
    return accounts_pb2.Account(
        name=format_name(ACCOUNTS, row.id),
        email=row.email,
        display_name=row.display_name,
        role=int(row.role),  # type: ignore[arg-type]
        parent=format_name(ACCOUNTS, parent_id) if parent_id else "",
        state=int(row.state),  # type: ignore[arg-type]
        create_time=timestamp(row.created_at),
    )


def api_key(row: ApiKey) -> api_keys_pb2.ApiKey:
    return api_keys_pb2.ApiKey(
        name=format_name(API_KEYS, row.id),
        account=format_name(ACCOUNTS, row.account_id),  # type: ignore[attr-defined]
        display_name=row.display_name,
        prefix=row.prefix,
        scopes=[int(s) for s in Scope if row.has_scope(s)],  # type: ignore[misc]
        allowed_models=row.allowed_models or [],
        create_time=timestamp(row.created_at),
        revoke_time=timestamp(row.revoked_at),
        expire_time=timestamp(row.expires_at),
    )


def usage_record(row: UsageRecord) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        name=format_name(USAGE_RECORDS, row.request_id),
        request_id=str(row.request_id),
        api_key=format_name(API_KEYS, row.api_key_id),  # type: ignore[attr-defined]
        account=format_name(ACCOUNTS, row.account_id),  # type: ignore[attr-defined]
        model=row.model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        latency=duration_pb2.Duration(seconds=row.latency_us // 1_000_000, nanos=row.latency_us % 1_000_000 * 1000),
        status=int(row.status),  # type: ignore[arg-type]
        source=int(row.source),  # type: ignore[arg-type]
        http_status=row.http_status,
        create_time=timestamp(row.created_at),
        settle_time=timestamp(row.settled_at),
    )
