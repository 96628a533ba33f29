"""Authorizing requests: what the edge's authorizer sends in one BatchAuthorize (a single request is a batch of one).

Each entry is validated, its key checked for its model (:mod:`~claudeopus.control.ledger.keys`),
its output cap decided (:class:`OutputPolicy`), its worst case held in every budget on the
key's chain, and its usage row opened in state RESERVED — in the order given: when a budget
runs out inside a batch, the earlier entries get what is left. A batch shares the work: one
read of the auth epoch, key contexts from the cache, and one transaction in which every
budget counter the batch touches is locked and read once (in the one global lock order,
:class:`~claudeopus.control.ledger.reservations.BatchHolds`), every row is written by one
INSERT and every counter moves once, by the sum of its holds. A refusal leaves nothing. (A
batch of one that no budget holds costs that one INSERT, which checks the epoch itself.)

If anything the batch read changed before it could write (the auth epoch moved, a request id
is already taken, a lock conflict), nothing of its transaction stays and each entry is
authorized again as a batch of its own. A batch of one whose epoch moved reads the key again
and goes on; one whose request id is taken answers as the first authorize of that id did
(also when the budgets would refuse it now: a retry finds its reservation).

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

from claudeopus.control.domain import prices, validation
from claudeopus.control.domain.auth_cache import AuthCache, KeyContext, load_context
from claudeopus.control.domain.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, Reason
from claudeopus.control.ledger import keys, reservations, store
from claudeopus.control.ledger.leases import hints
from claudeopus.control.models import ApiKey, Budget, BudgetMetric, UsageRecord, UsageStatus
from claudeopus.control.store import usage_rows
from claudeopus.control.store.auth_epoch import current_epoch
from claudeopus.costs import capped_cost_micros
from claudeopus.gateway_limits import MAX_AUTHORIZES_PER_CALL, MAX_CHOICES

_log = logging.getLogger(__name__)


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
class Authorized:
    """The open usage ``record``; ``enforced_output_tokens`` > 0 when budgets hold it, for the edge to cap."""

    record: UsageRecord
    enforced_output_tokens: int


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    """One entry's end: ``authorized`` (its open row and output cap), or refused with ``error``."""

    request_id: str
    authorized: Authorized | None = None
    error: DomainError | None = None


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request asks to be authorized for, checked."""

    model: str
    estimated_input_tokens: int
    max_output_tokens: int
    stream: bool
    # How many choices the upstream generates (n, best_of): each may produce max_output_tokens.
    choices: int = 1

    @classmethod
    def checked(
        cls, model: str, estimated_input_tokens: int, max_output_tokens: int, stream: bool, choices: int = 0
    ) -> Wanted:
        if not 0 <= choices <= MAX_CHOICES:
            raise InvalidArgument.field("choices", f"must be from 0 (one) to {MAX_CHOICES}")
        return cls(
            validation.model_name("model", model),
            validation.non_negative("estimated_input_tokens", estimated_input_tokens),
            validation.non_negative("max_output_tokens", max_output_tokens),
            stream,
            choices or 1,
        )


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    """How many output tokens to reserve when a request names no max_tokens: per model, else ``default``."""

    default: int = 4096
    per_model: tuple[tuple[str, int], ...] = ()

    def output_tokens(self, model: str, requested: int) -> int:
        if requested:
            return requested
        return dict(self.per_model).get(model, self.default)

    def reserved(self, wanted: Wanted) -> tuple[int, int]:
        """(the output cap per choice, the output reserved for all of the request's choices)."""
        per_choice = self.output_tokens(wanted.model, wanted.max_output_tokens)
        return per_choice, per_choice * wanted.choices


@dataclass(slots=True)
class _Candidate:
    """An entry that passed every check but the budgets."""

    index: int
    data: AuthorizeInput
    key: ApiKey
    wanted: Wanted
    output_tokens: int  # the cap per choice
    row: dict[str, Any]
    planned: list[tuple[Budget, reservations.Hold]]
    amounts: reservations.Amounts


class _Retry(Exception):
    """The batch's transaction cannot stand: nothing of it stayed."""


class _EpochMoved(_Retry):
    """What the checks read is no longer the database's word."""


class _Taken(_Retry):
    """A request id of the batch is already taken (a repeated authorize)."""


class _NothingTaken(Exception):
    """Every candidate was refused: the transaction rolls back."""


async def authorize_batch(
    batch: Sequence[AuthorizeInput], now: datetime, policy: OutputPolicy, cache: AuthCache | None = None
) -> list[AuthorizeResult]:
    """Authorize every entry of ``batch``; one result per entry, in order."""
    if len(batch) > MAX_AUTHORIZES_PER_CALL:
        raise InvalidArgument.field("requests", f"at most {MAX_AUTHORIZES_PER_CALL} requests per batch")
    results = await _authorize(batch, now, policy, cache)
    if any(result.error is not None for result in results):
        try:
            await hints.mark_held_by_leases([result.error for result in results], now)
        except Exception as error:  # only a hint: the batch's answers (reservations made) stand
            _log.warning("no lease hint for refusals: %s", type(error).__name__)
    return results


async def _authorize(
    batch: Sequence[AuthorizeInput],
    now: datetime,
    policy: OutputPolicy,
    cache: AuthCache | None,
    *,
    check_epoch: bool = True,
) -> list[AuthorizeResult]:
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
        for index, result in (await _reserve_all(candidates, epoch if check_epoch else None)).items():
            results[index] = result
    except _Retry as retry:
        if len(candidates) > 1:
            alone = await _one_by_one([candidate.data for candidate in candidates], now, policy, cache)
            for candidate, result in zip(candidates, alone, strict=True):
                results[candidate.index] = result
        elif isinstance(retry, _Taken):
            [candidate] = candidates
            results[candidate.index] = await _repeated(candidate)
        elif isinstance(retry, _EpochMoved) and check_epoch:
            # Read again at the new epoch: those reads are the database's word now.
            return await _authorize(batch, now, policy, cache, check_epoch=False)
        else:
            raise retry.__cause__ or retry from None
    return [result or AuthorizeResult(batch[index].request_id) for index, result in enumerate(results)]


async def _one_by_one(
    batch: Sequence[AuthorizeInput], now: datetime, policy: OutputPolicy, cache: AuthCache | None
) -> list[AuthorizeResult]:
    """Each entry authorized as a batch of its own (its batch's transaction could not stand)."""
    return [(await _authorize([data], now, policy, cache))[0] for data in batch]


async def _candidate(
    index: int,
    data: AuthorizeInput,
    seen: set[uuid.UUID],
    now: datetime,
    policy: OutputPolicy,
    cache: AuthCache | None,
    epoch: int,
) -> _Candidate:
    """Every check of an entry but the budgets; raises the entry's refusal."""
    rid = validation.uuid_value("request_id", data.request_id)
    if rid in seen:
        raise InvalidArgument.field("request_id", "appears twice in this batch")
    wanted = Wanted.checked(data.model, data.estimated_input_tokens, data.max_output_tokens, data.stream, data.choices)
    hex_hash = keys.key_hash_hex(data.key_hash)
    found = await (cache.context_at(epoch, hex_hash) if cache is not None else load_context(hex_hash))
    context = keys.usable(found, hex_hash, now)
    key = context.key
    await keys.check_served(context, wanted.model)
    per_choice, output_tokens = policy.reserved(wanted)
    amounts = await reserved_amounts_of(context, wanted, output_tokens)
    planned = reservations.plan(key, context.budgets, now)
    row = reservation_row(rid, key, wanted, output_tokens, now, amounts, [hold for _, hold in planned])
    return _Candidate(index, data, key, wanted, per_choice, row, planned, amounts)


async def _reserve_all(candidates: list[_Candidate], epoch: int | None) -> dict[int, AuthorizeResult]:
    """Hold every candidate's worst case that fits, in order, and open the rows: one transaction.

    With ``epoch``, only while the auth epoch still has that value (else :class:`_EpochMoved`).
    """
    results: dict[int, AuthorizeResult] = {}
    if not candidates:
        return results
    if len(candidates) == 1 and not candidates[0].planned:
        return await _open_unheld(candidates[0], epoch)
    repeated: list[_Candidate] = []
    try:
        async with in_transaction() as conn:
            holds = await reservations.BatchHolds.lock(
                conn, [pair for candidate in candidates for pair in candidate.planned]
            )
            rows: list[dict[str, Any]] = []
            refused: list[_Candidate] = []
            for candidate in candidates:
                try:
                    holds.take(candidate.key, candidate.planned, candidate.amounts)
                except DomainError as error:
                    results[candidate.index] = AuthorizeResult(candidate.data.request_id, error=error)
                    refused.append(candidate)
                    continue
                rows.append(candidate.row)
                record = UsageRecord(**candidate.row)
                record._saved_in_db = True
                enforced = candidate.output_tokens if candidate.planned else 0
                results[candidate.index] = AuthorizeResult(
                    candidate.data.request_id, authorized=Authorized(record, enforced)
                )
            if refused:
                # A refused retry of an authorize that took the last of a budget finds its row.
                taken = await store.taken_request_ids(conn, [candidate.row["request_id"] for candidate in refused])
                repeated = [candidate for candidate in refused if candidate.row["request_id"] in taken]
            if not rows:
                raise _NothingTaken  # every entry refused: not even a counter created for them stays
            if epoch is not None and await current_epoch(conn) != epoch:
                raise _EpochMoved
            await usage_rows.insert_open_records(conn, rows)
            await holds.apply(conn)
    except _NothingTaken:
        pass
    except IntegrityError as error:
        raise _Taken from error
    except (OperationalError, TransactionManagementError, reservations.ReservationConflict) as error:
        # A lock conflict (deadlock victim, SQLite busy), a counter that moved under the batch.
        raise _Retry from error
    for candidate in repeated:
        results[candidate.index] = await _repeated(candidate)
    return results


async def _open_unheld(candidate: _Candidate, epoch: int | None) -> dict[int, AuthorizeResult]:
    """:func:`_reserve_all` of one candidate no budget holds: its INSERT alone, checking the epoch itself."""
    try:
        record = await usage_rows.open_record(UsageRecord._meta.db, candidate.row, epoch)
    except IntegrityError as error:
        raise _Taken from error
    if record is None:
        raise _EpochMoved
    return {candidate.index: AuthorizeResult(candidate.data.request_id, authorized=Authorized(record, 0))}


async def _repeated(candidate: _Candidate) -> AuthorizeResult:
    """The answer to an authorize whose request id is taken: the first one's, if it is still open and the key's."""
    request_id = candidate.data.request_id
    earlier = await UsageRecord.get_or_none(request_id=candidate.row["request_id"])
    if earlier is None or earlier.api_key_id != candidate.key.id:
        conflict = AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used by another key.")
        return AuthorizeResult(request_id, error=conflict)
    if earlier.status != UsageStatus.RESERVED:
        settled = FailedPrecondition(Reason.REQUEST_ID_CONFLICT, "request_id was already settled.")
        return AuthorizeResult(request_id, error=settled)
    enforced = earlier.max_output_tokens // candidate.wanted.choices if earlier.reserved_counters else 0
    return AuthorizeResult(request_id, authorized=Authorized(earlier, enforced))


def reservation_row(
    rid: uuid.UUID,
    key: ApiKey,
    wanted: Wanted,
    output_tokens: int,
    now: datetime,
    amounts: reservations.Amounts | None = None,
    holds: Sequence[reservations.Hold] = (),
) -> dict[str, Any]:
    """Every column of a request's usage row as authorize opens it, holding ``amounts`` in ``holds``."""
    return usage_rows.open_fields(
        request_id=rid,
        api_key_id=key.id,
        account_id=key.account.id,
        model=wanted.model,
        estimated_input_tokens=wanted.estimated_input_tokens,
        max_output_tokens=output_tokens,
        stream=wanted.stream,
        created_at=now,
        reserved_cost_micros=amounts.cost_micros if amounts is not None else 0,
        reserved_counters=reservations.encode_holds(holds) if holds else "",
    )


async def reserved_amounts_of(context: KeyContext, wanted: Wanted, output_tokens: int) -> reservations.Amounts:
    """The worst case a request holds: its input bound, its output cap and (for cost budgets) their cost."""
    cost = 0
    if any(budget.metric is BudgetMetric.COST_MICROS for budget in context.budgets):
        price = await context.price(wanted.model)
        cost = capped_cost(wanted.estimated_input_tokens, output_tokens, price)
    return reservations.Amounts(wanted.estimated_input_tokens, output_tokens, cost)


def capped_cost(input_tokens: int, output_tokens: int, price: prices.PriceInForce) -> int:
    return capped_cost_micros(
        input_tokens, output_tokens, price.input_micros_per_million, price.output_micros_per_million
    )
