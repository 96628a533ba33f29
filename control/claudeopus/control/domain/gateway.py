"""The edge's hot path: verify a key, authorize (open a reservation), settle, expire.

Every authorized request leaves exactly one usage row: Authorize writes it in
state RESERVED (holding its worst case in every budget that applies), Settle
closes it once with the real usage (a repeated Settle changes nothing), and a
reservation whose edge never settles is closed by :func:`expire_stale`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import prices, reservations, validation
from claudeopus.control.domain.auth_cache import AuthCache, KeyContext, load_context
from claudeopus.control.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from claudeopus.control.domain.principal import check_key, suspended
from claudeopus.control.models import ApiKey, BudgetMetric, Scope, UsageRecord, UsageSource, UsageStatus
from claudeopus.control.store.auth_epoch import current_epoch
from claudeopus.control.store.usage_rows import open_fields, open_record
from claudeopus.costs import capped_cost_micros

KEY_HASH_BYTES = 32
# The most choices (n, best_of) one request may reserve output for; the edge's own limit is lower.
MAX_CHOICES = 128
EXPIRE_BATCH = 500
SETTLED_STATES = (UsageStatus.SUCCEEDED, UsageStatus.UPSTREAM_ERROR, UsageStatus.CLIENT_DISCONNECTED)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What Settle reports back: the ``record`` as stored, and whether it was already closed."""

    record: UsageRecord
    already_settled: bool


@dataclass(frozen=True, slots=True)
class LeasedInput:
    """What an edge reserved for one request it admitted from a lease (SettleRequest.leased)."""

    lease_id: str
    estimated_input_tokens: int
    max_output_tokens: int
    reserved_cost_micros: int
    stream: bool
    reserve_time: datetime


@dataclass(frozen=True, slots=True)
class SettleInput:
    request_id: str
    input_tokens: int
    output_tokens: int
    latency_us: int
    status: int
    source: int
    http_status: int
    # Set for a request admitted from a lease: its settle opens its row first (leases.open_leased).
    leased: LeasedInput | None = None


def key_hash_hex(value: bytes) -> str:
    if len(value) != KEY_HASH_BYTES:
        raise InvalidArgument.field("key_hash", "must be the 32-byte SHA-256 of the key")
    return value.hex()


async def key_context(key_hash: bytes, now: datetime, cache: AuthCache | None = None) -> KeyContext:
    """The context of a key that may serve inference at ``now``, or the denial (cached when ``cache`` is given)."""
    hex_hash = key_hash_hex(key_hash)
    context = await (cache.context(hex_hash) if cache is not None else load_context(hex_hash))
    return usable(context, hex_hash, now)


def usable(context: KeyContext | None, hex_hash: str, now: datetime) -> KeyContext:
    check_key(None if context is None else context.key, hex_hash, Scope.INFERENCE, now)
    assert context is not None  # check_key refused a missing key
    if context.suspended:
        raise suspended()
    if context.policy.outlived(context.key, now):  # older than the longest lifetime set above it
        raise Unauthenticated(Reason.KEY_EXPIRED, "This API key has expired.")
    return context


class _EpochMoved(Exception):
    """A cached context's epoch is no longer current: authorize again from the database."""


async def verify_key(key_hash: bytes, now: datetime, cache: AuthCache | None = None) -> ApiKey:
    return (await key_context(key_hash, now, cache)).key


def allowed_models(context: KeyContext) -> list[str]:
    """The models the key may use (empty: every model): its own list within its account policies."""
    allowed = context.policy.models_for(context.key.allowed_models)
    if allowed is None:
        return []
    if not allowed:
        raise PermissionDenied(Reason.MODEL_NOT_ALLOWED, "This API key may not use any model.")
    return sorted(allowed)


def check_model(context: KeyContext, model: str) -> None:
    allowed = context.policy.models_for(context.key.allowed_models)
    if allowed is not None and model not in allowed:
        raise PermissionDenied(Reason.MODEL_NOT_ALLOWED, f"This API key may not use the model '{model}'.")


async def check_served(context: KeyContext, model: str) -> prices.PriceInForce:
    """The price in force for ``model`` if the key may use it; a model without one is not served.

    Unpriced, a model would cost nothing and escape every cost budget; an explicit zero price
    serves it for free. The price comes from the key's context (read once per model and epoch).
    """
    check_model(context, model)
    price = await context.price(model)
    if not price.priced:
        raise PermissionDenied(
            Reason.MODEL_NOT_AVAILABLE, f"The model '{model}' does not exist or is not available to this API key."
        )
    return price


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


@dataclass(frozen=True, slots=True)
class Authorized:
    """The open usage ``record``; ``enforced_output_tokens`` > 0 when budgets hold it, for the edge to cap."""

    record: UsageRecord
    enforced_output_tokens: int


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


async def authorize(
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
    """Check the key for ``model``, reserve the worst case in every budget, open the usage record.

    Without budgets this is the key check (with the model's price: a model without one
    is not served) plus one INSERT; with budgets, the
    holds and the INSERT share one transaction, so a refusal leaves nothing.
    With a ``cache`` holding the key, the key check costs no query: the INSERT
    itself confirms that nothing the check read has changed (else it starts over),
    and a refusal is confirmed against the epoch before it is given.
    """
    rid = validation.uuid_value("request_id", request_id)
    wanted = Wanted.checked(model, estimated_input_tokens, max_output_tokens, stream, choices)
    hex_hash = key_hash_hex(key_hash)
    hit = cache.cached(hex_hash) if cache is not None else None
    if cache is not None and hit is not None:
        cached, epoch = hit
        try:
            return await _authorize(rid, cached, hex_hash, wanted, now, policy, epoch)
        except _EpochMoved:
            cache.forget(epoch)
        except DomainError:
            if await current_epoch() == epoch:
                raise  # refused on what is still the database's word
            cache.forget(epoch)
    context = await (cache.context(hex_hash) if cache is not None else load_context(hex_hash))
    return await _authorize(rid, context, hex_hash, wanted, now, policy, None)


async def _authorize(
    rid: uuid.UUID,
    found: KeyContext | None,
    hex_hash: str,
    wanted: Wanted,
    now: datetime,
    policy: OutputPolicy,
    epoch: int | None,
) -> Authorized:
    """:func:`authorize` on one key context; with ``epoch``, raises _EpochMoved if that is no longer current."""
    context = usable(found, hex_hash, now)
    key = context.key
    await check_served(context, wanted.model)
    per_choice, output_tokens = policy.reserved(wanted)
    try:
        if not context.budgets:
            fields = reservation_row(rid, key, wanted, output_tokens, now)
            record = await open_record(UsageRecord._meta.db, fields, epoch)
            if record is None:
                raise _EpochMoved
            return Authorized(record, 0)
        amounts = await reserved_amounts_of(context, wanted, output_tokens)
        planned = reservations.plan(key, context.budgets, now)
        fields = reservation_row(rid, key, wanted, output_tokens, now, amounts, [hold for _, hold in planned])
        async with in_transaction() as conn:
            # The row first: it contends with nothing, so the counters are locked only for
            # the holds themselves and the commit.
            record = await open_record(conn, fields, epoch)
            if record is None:
                raise _EpochMoved  # nothing was written: the transaction ends empty
            await reservations.take(conn, key, planned, amounts)
        return Authorized(record, per_choice)
    except IntegrityError:
        earlier = await _repeated_authorize(rid, key)
        return Authorized(earlier, earlier.max_output_tokens // wanted.choices if earlier.reserved_counters else 0)


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
    return open_fields(
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


async def _repeated_authorize(rid: uuid.UUID, key: ApiKey) -> UsageRecord:
    earlier = await UsageRecord.get_or_none(request_id=rid)
    if earlier is None or earlier.api_key_id != key.id:  # type: ignore[attr-defined]
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used by another key.")
    if earlier.status != UsageStatus.RESERVED:
        raise FailedPrecondition(Reason.REQUEST_ID_CONFLICT, "request_id was already settled.")
    return earlier


def settle_fields(data: SettleInput) -> tuple[UsageStatus, UsageSource]:
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


def reserved_amounts(record: UsageRecord) -> reservations.Amounts:
    return reservations.Amounts(record.estimated_input_tokens, record.max_output_tokens, record.reserved_cost_micros)


def charged_amounts(record: UsageRecord) -> reservations.Amounts:
    return reservations.Amounts(record.input_tokens, record.output_tokens, record.cost_micros)


def counter_moves(
    record: UsageRecord, charge: reservations.Amounts
) -> tuple[reservations.Amounts, reservations.Amounts]:
    """What closing ``record`` at ``charge`` moves in each counter it holds: (release, charge)."""
    if record.status is UsageStatus.EXPIRED:
        # The sweeper charged the reservation; a late settle replaces that charge by the real one.
        expired = charged_amounts(record)
        delta = reservations.Amounts(
            charge.input_tokens - expired.input_tokens,
            charge.output_tokens - expired.output_tokens,
            charge.cost_micros - expired.cost_micros,
        )
        return reservations.Amounts(0, 0, 0), delta
    return reserved_amounts(record), charge


@dataclass(frozen=True, slots=True)
class Closing:
    """How a settle closes its row: the ``fields`` written and the real amounts ``charge``d."""

    fields: dict[str, Any]
    charge: reservations.Amounts


def closing(
    data: SettleInput, status: UsageStatus, source: UsageSource, price: prices.PriceInForce, now: datetime
) -> Closing:
    charge = reservations.Amounts(
        data.input_tokens, data.output_tokens, capped_cost(data.input_tokens, data.output_tokens, price)
    )
    fields: dict[str, Any] = {
        "input_tokens": charge.input_tokens,
        "output_tokens": charge.output_tokens,
        "latency_us": data.latency_us,
        "status": status,
        "source": source,
        "http_status": data.http_status,
        "settled_at": now,
        "cost_micros": charge.cost_micros,
    }
    return Closing(fields, charge)


async def _close(record: UsageRecord, settled: dict[str, Any], charge: reservations.Amounts) -> bool:
    """Close ``record`` (still in the state it was read in) and move its holds; False if someone else did."""
    holds = reservations.decode_holds(record.reserved_counters)
    async with in_transaction() as conn:
        # Also unchanged holds: a budget created meanwhile may have joined the reservation
        # (budgets.create_budget); then this misses, and the caller reads the row again.
        changed = (
            await UsageRecord.filter(id=record.id, status=record.status, reserved_counters=record.reserved_counters)
            .using_db(conn)
            .update(**settled)
        )
        if not changed:
            return False
        release, moved = counter_moves(record, charge)
        await reservations.move(conn, holds, release=release, charge=moved)
    return True


async def settle(data: SettleInput, now: datetime) -> Settlement:
    """Close the reservation with the real usage and its cost; idempotent by request id.

    The cost is taken at the price in force for the record's account and model.
    The row and every budget counter it held move in one transaction, so the
    counters always equal the sum of the rows. A settle that arrives after the
    sweeper expired the reservation replaces the expired charge by the real one,
    once; any later settle changes nothing.
    """
    rid = validation.uuid_value("request_id", data.request_id)
    status, source = settle_fields(data)
    for _ in range(3):
        record = await UsageRecord.get_or_none(request_id=rid).select_related("account")
        if record is None:
            raise NotFound(Reason.RESERVATION_NOT_FOUND, "No authorized request has this request_id.")
        if record.status not in (UsageStatus.RESERVED, UsageStatus.EXPIRED):
            return Settlement(record=record, already_settled=True)
        price = prices.in_force(await prices.chain_prices(record.account.ancestor_ids(), record.model))
        closed = closing(data, status, source, price, now)
        if await _close(record, closed.fields, closed.charge):
            for field, value in closed.fields.items():
                setattr(record, field, value)
            return Settlement(record=record, already_settled=False)
    record = await UsageRecord.get(request_id=rid)
    return Settlement(record=record, already_settled=True)


async def expire_stale(now: datetime, max_age: timedelta, *, batch: int = EXPIRE_BATCH) -> int:
    """Close reservations older than ``max_age`` as EXPIRED, charged their reserved amounts.

    Charging the whole reservation (its reserved cost when a cost budget held
    it, else its tokens at today's price) is the conservative choice: the edge that
    held it died without saying what the upstream produced, and the reserved
    amounts are what the budgets already allowed. A settle that arrives later
    replaces this charge with the real one. Returns how many were closed.
    """
    stale = (
        await UsageRecord.filter(status=UsageStatus.RESERVED, created_at__lt=now - max_age)
        .select_related("account")
        .order_by("created_at")
        .limit(batch)
    )
    closed = 0
    for record in stale:
        reserved = reserved_amounts(record)
        holds = reservations.decode_holds(record.reserved_counters)
        if any(hold.metric is BudgetMetric.COST_MICROS for hold in holds):
            # Exactly what the cost budgets admitted, even if a price changed since.
            charge = reserved
        else:
            price = prices.in_force(await prices.chain_prices(record.account.ancestor_ids(), record.model))
            cost = capped_cost(reserved.input_tokens, reserved.output_tokens, price)
            charge = reservations.Amounts(reserved.input_tokens, reserved.output_tokens, cost)
        settled: dict[str, Any] = {
            "input_tokens": charge.input_tokens,
            "output_tokens": charge.output_tokens,
            "status": UsageStatus.EXPIRED,
            "source": UsageSource.RESERVED,
            "settled_at": now,
            "cost_micros": charge.cost_micros,
        }
        closed += await _close(record, settled, charge)
    return closed
