"""The edge's hot path: verify a key, authorize (open a reservation), settle.

Every authorized request leaves exactly one usage row: Authorize writes it in
state RESERVED, Settle closes it once (a repeated Settle changes nothing).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError

from claudeopus.control.domain import prices, validation
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.principal import usable_key
from claudeopus.control.models import ApiKey, Scope, UsageRecord, UsageSource, UsageStatus

KEY_HASH_BYTES = 32
MAX_STORED_COST = 2**63 - 1  # the largest BIGINT: an absurd token count saturates instead of failing the settle
SETTLED_STATES = (UsageStatus.SUCCEEDED, UsageStatus.UPSTREAM_ERROR, UsageStatus.CLIENT_DISCONNECTED)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What Settle reports back: the ``record`` as stored, and whether it was already closed."""

    record: UsageRecord
    already_settled: bool


@dataclass(frozen=True, slots=True)
class SettleInput:
    request_id: str
    input_tokens: int
    output_tokens: int
    latency_us: int
    status: int
    source: int
    http_status: int


def _key_hash(value: bytes) -> str:
    if len(value) != KEY_HASH_BYTES:
        raise InvalidArgument.field("key_hash", "must be the 32-byte SHA-256 of the key")
    return value.hex()


async def verify_key(key_hash: bytes, now: datetime) -> ApiKey:
    return await usable_key(_key_hash(key_hash), Scope.INFERENCE, now)


def _check_model(key: ApiKey, model: str) -> None:
    allowed = key.allowed_models
    if allowed and model not in allowed:
        raise PermissionDenied(Reason.MODEL_NOT_ALLOWED, f"This API key may not use the model '{model}'.")


async def authorize(
    *,
    request_id: str,
    key_hash: bytes,
    model: str,
    estimated_input_tokens: int,
    max_output_tokens: int,
    stream: bool,
    now: datetime,
) -> UsageRecord:
    """Check the key for ``model`` and open the request's usage record (state RESERVED)."""
    rid = validation.uuid_value("request_id", request_id)
    model = validation.model_name("model", model)
    validation.non_negative("estimated_input_tokens", estimated_input_tokens)
    validation.non_negative("max_output_tokens", max_output_tokens)
    key = await verify_key(key_hash, now)
    _check_model(key, model)
    try:
        return await UsageRecord.create(
            request_id=rid,
            api_key_id=key.id,
            account_id=key.account.id,
            model=model,
            estimated_input_tokens=estimated_input_tokens,
            max_output_tokens=max_output_tokens,
            stream=stream,
            created_at=now,
        )
    except IntegrityError:
        return await _repeated_authorize(rid, key)


async def _repeated_authorize(rid: uuid.UUID, key: ApiKey) -> UsageRecord:
    earlier = await UsageRecord.get_or_none(request_id=rid)
    if earlier is None or earlier.api_key_id != key.id:  # type: ignore[attr-defined]
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used by another key.")
    if earlier.status != UsageStatus.RESERVED:
        raise FailedPrecondition(Reason.REQUEST_ID_CONFLICT, "request_id was already settled.")
    return earlier


def _settle_fields(data: SettleInput) -> tuple[UsageStatus, UsageSource]:
    for field in ("input_tokens", "output_tokens", "latency_us", "http_status"):
        validation.non_negative(field, getattr(data, field))
    try:
        status = UsageStatus(data.status)
    except ValueError:
        status = UsageStatus.RESERVED
    if status not in SETTLED_STATES:
        raise InvalidArgument.field("status", "must be SUCCEEDED, UPSTREAM_ERROR or CLIENT_DISCONNECTED")
    try:
        source = UsageSource(data.source)
    except ValueError:
        source = UsageSource.NONE
    if source not in (UsageSource.REPORTED, UsageSource.ESTIMATED):
        raise InvalidArgument.field("source", "must be USAGE_SOURCE_REPORTED or USAGE_SOURCE_ESTIMATED")
    return status, source


async def settle(data: SettleInput, now: datetime) -> Settlement:
    """Close the reservation with the real usage and its cost; idempotent by request id.

    The cost is taken at the price in force for the record's account and model
    (one query for that model's prices on the account's chain) and written by
    the same conditional UPDATE that closes the row.
    """
    rid = validation.uuid_value("request_id", data.request_id)
    status, source = _settle_fields(data)
    record = await UsageRecord.get_or_none(request_id=rid).select_related("account")
    if record is None:
        raise NotFound(Reason.RESERVATION_NOT_FOUND, "No authorized request has this request_id.")
    if record.status != UsageStatus.RESERVED:
        return Settlement(record=record, already_settled=True)
    price = prices.in_force(await prices.chain_prices(record.account.ancestor_ids(), record.model))
    settled = {
        "input_tokens": data.input_tokens,
        "output_tokens": data.output_tokens,
        "latency_us": data.latency_us,
        "status": status,
        "source": source,
        "http_status": data.http_status,
        "settled_at": now,
        "cost_micros": min(
            MAX_STORED_COST,
            prices.cost_micros(
                data.input_tokens, data.output_tokens, price.input_micros_per_million, price.output_micros_per_million
            ),
        ),
    }
    # One conditional UPDATE: whichever settle comes first wins, the rest find it closed.
    changed = await UsageRecord.filter(id=record.id, status=UsageStatus.RESERVED).update(**settled)
    if not changed:
        await record.refresh_from_db()
        return Settlement(record=record, already_settled=True)
    for field, value in settled.items():
        setattr(record, field, value)
    return Settlement(record=record, already_settled=False)
