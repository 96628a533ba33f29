"""Authorizing many requests at once: what the edge's authorizer sends in one BatchAuthorize.

Each entry is decided exactly as :func:`claudeopus.control.domain.gateway.authorize`
decides it (same validation, key and model checks, output cap, worst case held in every
budget, one usage row in state RESERVED), in the order given: when a budget runs out
inside a batch, the earlier entries get what is left. The batch only shares the work:
one read of the auth epoch, key contexts from the cache, and one transaction in which
every budget counter the batch touches is locked and read once (in the one global lock
order, :class:`~claudeopus.control.domain.reservations.BatchHolds`), every row is
written by one INSERT and every counter moves once, by the sum of its holds.

If anything the batch read changed before it could write (the auth epoch moved, a
request id is already taken, a lock conflict), nothing of its transaction stays and
every entry is authorized on its own instead, with the single call's own retries.
A batch of one is the single call.

Example::

    results = await authorize_batch([AuthorizeInput(...), AuthorizeInput(...)], now, policy, cache)
    for result in results:
        print(result.error.reason if result.error else result.authorized.enforced_output_tokens)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import gateway, leases, reservations, validation
from claudeopus.control.domain.auth_cache import AuthCache, KeyContext, load_context
from claudeopus.control.domain.errors import DomainError, InvalidArgument
from claudeopus.control.models import ApiKey, Budget, UsageRecord
from claudeopus.control.store import usage_rows
from claudeopus.control.store.auth_epoch import current_epoch

_log = logging.getLogger(__name__)
MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuthorizeInput:
    request_id: str
    key_hash: bytes
    model: str
    estimated_input_tokens: int
    max_output_tokens: int
    stream: bool
    choices: int = 0  # n / best_of; 0 means 1


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    """One entry's end: ``authorized`` (its open row and output cap), or refused with ``error``."""

    request_id: str
    authorized: gateway.Authorized | None = None
    error: DomainError | None = None


@dataclass(slots=True)
class _Candidate:
    """An entry that passed every check but the budgets."""

    index: int
    data: AuthorizeInput
    key: ApiKey
    output_tokens: int  # the cap per choice
    row: dict[str, Any]
    planned: list[tuple[Budget, reservations.Hold]]
    amounts: reservations.Amounts


class _Retry(Exception):
    """The batch's transaction cannot stand: every entry is authorized on its own."""


async def authorize_batch(
    batch: Sequence[AuthorizeInput], now: datetime, policy: gateway.OutputPolicy, cache: AuthCache | None = None
) -> list[AuthorizeResult]:
    """Authorize every entry of ``batch``; one result per entry, in order."""
    if len(batch) > MAX_BATCH:
        raise InvalidArgument.field("requests", f"at most {MAX_BATCH} requests per batch")
    results = await _authorize_batch(batch, now, policy, cache)
    if any(result.error is not None for result in results):
        try:
            await leases.mark_held_by_leases([result.error for result in results], now)
        except Exception as error:  # only a hint: the batch's answers (reservations made) stand
            _log.warning("no lease hint for refusals: %s", type(error).__name__)
    return results


async def _authorize_batch(
    batch: Sequence[AuthorizeInput], now: datetime, policy: gateway.OutputPolicy, cache: AuthCache | None
) -> list[AuthorizeResult]:
    if len(batch) == 1:
        return [await _alone(batch[0], now, policy, cache)]
    results: list[AuthorizeResult | None] = [None] * len(batch)
    epoch = await current_epoch()
    candidates: list[_Candidate] = []
    seen: set[uuid.UUID] = set()
    for index, data in enumerate(batch):
        try:
            candidate = await _candidate(index, data, seen, now, policy, cache, epoch)
        except DomainError as error:
            results[index] = AuthorizeResult(data.request_id, error=error)
            continue
        seen.add(candidate.row["request_id"])
        candidates.append(candidate)
    try:
        for index, result in (await _reserve_all(candidates, epoch)).items():
            results[index] = result
    except _Retry:
        for candidate in candidates:
            results[candidate.index] = await _alone(candidate.data, now, policy, cache)
    return [result or AuthorizeResult(batch[index].request_id) for index, result in enumerate(results)]


async def authorize_one(
    data: AuthorizeInput, now: datetime, policy: gateway.OutputPolicy, cache: AuthCache | None = None
) -> gateway.Authorized:
    """A single Authorize (:func:`~claudeopus.control.domain.gateway.authorize`); raises its refusal."""
    return await gateway.authorize(
        request_id=data.request_id,
        key_hash=data.key_hash,
        model=data.model,
        estimated_input_tokens=data.estimated_input_tokens,
        max_output_tokens=data.max_output_tokens,
        stream=data.stream,
        now=now,
        policy=policy,
        cache=cache,
        choices=data.choices,
    )


async def _alone(
    data: AuthorizeInput, now: datetime, policy: gateway.OutputPolicy, cache: AuthCache | None
) -> AuthorizeResult:
    try:
        return AuthorizeResult(data.request_id, authorized=await authorize_one(data, now, policy, cache))
    except DomainError as error:
        return AuthorizeResult(data.request_id, error=error)


async def _candidate(
    index: int,
    data: AuthorizeInput,
    seen: set[uuid.UUID],
    now: datetime,
    policy: gateway.OutputPolicy,
    cache: AuthCache | None,
    epoch: int,
) -> _Candidate:
    """Every check of a single authorize but the budgets; raises the entry's refusal."""
    rid = validation.uuid_value("request_id", data.request_id)
    if rid in seen:
        raise InvalidArgument.field("request_id", "appears twice in this batch")
    wanted = gateway.Wanted.checked(
        data.model, data.estimated_input_tokens, data.max_output_tokens, data.stream, data.choices
    )
    hex_hash = gateway.key_hash_hex(data.key_hash)
    found = await (cache.context_at(epoch, hex_hash) if cache is not None else load_context(hex_hash))
    context: KeyContext = gateway.usable(found, hex_hash, now)
    key = context.key
    await gateway.check_served(context, wanted.model)
    per_choice, output_tokens = policy.reserved(wanted)
    amounts = await gateway.reserved_amounts_of(context, wanted, output_tokens)
    planned = reservations.plan(key, context.budgets, now)
    row = gateway.reservation_row(rid, key, wanted, output_tokens, now, amounts, [hold for _, hold in planned])
    return _Candidate(index, data, key, per_choice, row, planned, amounts)


async def _reserve_all(candidates: list[_Candidate], epoch: int) -> dict[int, AuthorizeResult]:
    """Hold every candidate's worst case that fits, in order, and open the rows: one transaction."""
    results: dict[int, AuthorizeResult] = {}
    if not candidates:
        return results
    try:
        async with in_transaction() as conn:
            holds = await reservations.BatchHolds.lock(
                conn, [pair for candidate in candidates for pair in candidate.planned]
            )
            rows: list[dict[str, Any]] = []
            for candidate in candidates:
                try:
                    holds.take(candidate.key, candidate.planned, candidate.amounts)
                except DomainError as error:
                    results[candidate.index] = AuthorizeResult(candidate.data.request_id, error=error)
                    continue
                rows.append(candidate.row)
                record = UsageRecord(**candidate.row)
                record._saved_in_db = True
                enforced = candidate.output_tokens if candidate.planned else 0
                results[candidate.index] = AuthorizeResult(
                    candidate.data.request_id, authorized=gateway.Authorized(record, enforced)
                )
            if rows:
                # What the checks read is still the database's word (as the single INSERT checks it).
                if await current_epoch(conn) != epoch:
                    raise _Retry
                await usage_rows.insert_open_records(conn, rows)
                await holds.apply(conn)
    except (IntegrityError, OperationalError, TransactionManagementError, reservations.ReservationConflict):
        # A request id already taken, a lock conflict (deadlock victim, SQLite busy), a counter
        # that moved: nothing of the transaction stayed.
        raise _Retry from None
    return results
