"""One request through the ledger's batch operations, answered as a single call would answer it.

The ledger authorizes and settles in batches only; a test of one request sends a batch of one.
A refused entry raises its domain error.

Example::

    authorized = await authorize_one(request_id=rid, key_hash=h, model="m-1", estimated_input_tokens=11,
                                     max_output_tokens=22, stream=True, now=NOW, policy=OutputPolicy())
    settled = await settle_one(SettleInput(...), LATER)
    assert settled.record.input_tokens == 5 and not settled.already_settled
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from claudeopus.control.domain.auth_cache import AuthCache
from claudeopus.control.ledger.authorize import Authorized, AuthorizeInput, OutputPolicy, authorize_batch
from claudeopus.control.ledger.settle import SettleInput, settle_batch
from claudeopus.control.models import UsageRecord


@dataclass(frozen=True, slots=True)
class Settlement:
    """A settle of one request: its ``record`` as stored, and whether it was settled before."""

    record: UsageRecord
    already_settled: bool


async def authorize_one(
    *,
    request_id: str,
    key_hash: bytes,
    model: str,
    estimated_input_tokens: int,
    max_output_tokens: int,
    stream: bool,
    now: datetime,
    policy: OutputPolicy,
    cache: AuthCache | None = None,
    choices: int = 0,
) -> Authorized:
    """:func:`authorize_batch` of one entry: its open row (as stored) and output cap, or its refusal raised."""
    entry = AuthorizeInput(request_id, key_hash, model, estimated_input_tokens, max_output_tokens, stream, choices)
    [result] = await authorize_batch([entry], now, policy, cache)
    if result.error is not None:
        raise result.error
    assert result.authorized is not None
    record = await UsageRecord.get(request_id=result.authorized.record.request_id)
    return Authorized(record, result.authorized.enforced_output_tokens)


async def settle_one(data: SettleInput, now: datetime) -> Settlement:
    """:func:`settle_batch` of one entry: the request's row as stored, or its refusal raised."""
    [result] = await settle_batch([data], now)
    if result.error is not None:
        raise result.error
    record = await UsageRecord.get(request_id=data.request_id)
    return Settlement(record, result.already_settled)
