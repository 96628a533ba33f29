"""Price tables: set, read, list, change and remove prices, and resolve the price in force.

A price is set for one model on one account, in micro-units per million tokens.
The admin sets base prices on the root account; a reseller sets its markup on
its own account or on accounts below it. The price in force on an account is,
per component, the highest price for the model on the account and all its
ancestors, so nobody in a subtree is ever charged less than what its reseller
pays, even after an ancestor raises its price. A new or changed price must not
be below the price in force on the account's parent (``PRICE_BELOW_PARENT``);
that check only guides the caller, the maximum rule is what guarantees it.

Every lookup is confined to the caller's subtree; anything outside it is not
found. Users (the leaves of the hierarchy) may read prices but not set them.

Example::

    price = await create_price(principal, parent_id=None, model="gpt-x", input_micros=150, output_micros=250,
                               request_id="")
    in_force = await resolve(principal, account_id=None, model="gpt-x")
    cost = costs.cost_micros(1_000, 200, in_force.input_micros_per_million, in_force.output_micros_per_million)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError

from claudeopus.control.domain import validation
from claudeopus.control.domain.accounts import account_in_subtree
from claudeopus.control.domain.clock import utc_now
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, Price, Role

MAX_AMOUNT = 10**12
INPUT = "input_micros_per_million"
OUTPUT = "output_micros_per_million"
UPDATABLE_FIELDS = (INPUT, OUTPUT)


# -- the price in force ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceInForce:
    """The price a model costs on an account; ``sources`` are the prices it comes from, root first."""

    priced: bool
    input_micros_per_million: int
    output_micros_per_million: int
    sources: list[Price]


async def chain_prices(account_ids: Sequence[int], model: str) -> list[Price]:
    """The prices for ``model`` set on any of ``account_ids`` (a chain, root first), in chain order. One query."""
    if not account_ids:
        return []
    rows = await Price.filter(account_id__in=list(account_ids), model=model)
    order = {account_id: index for index, account_id in enumerate(account_ids)}
    return sorted(rows, key=lambda row: order[row.account_id])  # type: ignore[attr-defined]


def in_force(sources: list[Price]) -> PriceInForce:
    """Per component, the highest of ``sources``; unpriced (0, 0) when there are none."""
    return PriceInForce(
        priced=bool(sources),
        input_micros_per_million=max((p.input_micros_per_million for p in sources), default=0),
        output_micros_per_million=max((p.output_micros_per_million for p in sources), default=0),
        sources=sources,
    )


async def resolve(principal: Principal, *, account_id: int | None, model: str) -> PriceInForce:
    """The price in force for ``model`` on ``account_id`` (default: the caller's own account)."""
    model = validation.model_name("model", model)
    account = await account_in_subtree(principal, account_id, "account")
    return in_force(await chain_prices(account.ancestor_ids(), model))


# -- checks ----------------------------------------------------------------------


def _amounts(values: dict[str, int]) -> dict[str, int]:
    violations = [
        FieldViolation(f"price.{field}", f"must be between 0 and {MAX_AMOUNT}")
        for field, value in values.items()
        if not 0 <= value <= MAX_AMOUNT
    ]
    if violations:
        raise InvalidArgument(violations)
    return values


def _may_set_prices(principal: Principal) -> None:
    if principal.role not in (Role.ADMIN, Role.RESELLER):
        raise PermissionDenied(Reason.ROLE_DENIED, "Only admins and resellers can set prices.")


async def _check_not_below_parent(account: Account, model: str, wanted: dict[str, int]) -> None:
    """Each component in ``wanted`` is at least the price in force on ``account``'s parent."""
    parent_chain = account.ancestor_ids()[:-1]
    parent = in_force(await chain_prices(parent_chain, model))
    if not parent.priced:
        return
    floor = {INPUT: parent.input_micros_per_million, OUTPUT: parent.output_micros_per_million}
    below = [
        f"price.{field} {wanted[field]} is below {floor[field]}" for field in wanted if wanted[field] < floor[field]
    ]
    if below:
        raise FailedPrecondition(
            Reason.PRICE_BELOW_PARENT,
            f"{'; '.join(below)}, the price in force on the parent account for '{model}'.",
        )


async def price_in_subtree(principal: Principal, price_id: int, field: str = "name") -> Price:
    price = await Price.get_or_none(id=price_id).select_related("account")
    if price is None or not principal.owns(price.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: price not found.")
    return price


# -- create ----------------------------------------------------------------------


async def create_price(
    principal: Principal,
    *,
    parent_id: int | None,
    model: str,
    input_micros: int,
    output_micros: int,
    request_id: str,
    now: datetime | None = None,
) -> Price:
    """Set a price for ``model`` on ``parent_id`` (default: the caller's own account).

    Like every price change it holds on every edge when it returns (see :func:`_outlive_leases`).
    """
    _may_set_prices(principal)
    model = validation.model_name("price.model", model)
    wanted = _amounts({INPUT: input_micros, OUTPUT: output_micros})
    rid = validation.request_id("request_id", request_id)
    account = await account_in_subtree(principal, parent_id, "parent")
    price = await _create_price(account, model, wanted, rid)
    await _outlive_leases(account, model, now)
    return price


async def _create_price(account: Account, model: str, wanted: dict[str, int], rid: str | None) -> Price:
    if rid is not None:
        earlier = await Price.get_or_none(account_id=account.id, create_request_id=rid)
        if earlier is not None:
            return _same_request(earlier, model, wanted)
    await _check_not_below_parent(account, model, wanted)
    try:
        price = await Price.create(
            account_id=account.id,
            model=model,
            input_micros_per_million=wanted[INPUT],
            output_micros_per_million=wanted[OUTPUT],
            create_request_id=rid,
        )
    except IntegrityError:
        if rid is not None:
            earlier = await Price.get_or_none(account_id=account.id, create_request_id=rid)
            if earlier is not None:
                return _same_request(earlier, model, wanted)
        raise AlreadyExists(
            Reason.RESOURCE_EXISTS, "price.model: this account already has a price for this model; update it."
        ) from None
    return price


async def _outlive_leases(account: Account, model: str, now: datetime | None) -> None:
    """Return once the leases that price ``model`` in ``account``'s subtree have ended.

    A lease that holds budget reserves each request's cost at the price in force when it was
    granted (see leases.py): after a change, no edge admits at the old price.
    """
    await outlive_leases(account=account, model=model, unlimited=False, now=now or utc_now())


def _same_request(earlier: Price, model: str, wanted: dict[str, int]) -> Price:
    if (earlier.model, earlier.input_micros_per_million, earlier.output_micros_per_million) != (
        model,
        wanted[INPUT],
        wanted[OUTPUT],
    ):
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used for a different price.")
    return earlier


# -- list ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PricePage:
    prices: list[Price]
    next_page_token: str


async def list_prices(
    principal: Principal, codec: PageTokenCodec, *, account: Account, size: int, token: str
) -> PricePage:
    """Prices set on ``account`` (already checked to be in the caller's subtree), ordered by model.

    The page token is bound to the caller's credential and to the account.
    """
    limit = page_size(size)
    scope = f"prices|caller={principal.credential}|parent={account.id}"
    query = Price.filter(account_id=account.id)
    rows, next_token = await keyset_page(query, codec, scope, token, limit, key="model")
    return PricePage(prices=rows, next_page_token=next_token)


# -- update and delete -----------------------------------------------------------


def update_paths(paths: Sequence[str]) -> tuple[str, ...]:
    """The amounts an update mask names; ``*`` means both, empty means none."""
    if list(paths) == ["*"]:
        return UPDATABLE_FIELDS
    unknown = sorted({p for p in paths if p not in UPDATABLE_FIELDS})
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(UPDATABLE_FIELDS)}"
        )
    return tuple(f for f in UPDATABLE_FIELDS if f in paths)


async def update_price(
    principal: Principal,
    price_id: int,
    *,
    paths: Sequence[str],
    input_micros: int,
    output_micros: int,
    now: datetime,
) -> Price:
    """Change the amounts named by ``paths`` of a price in the caller's subtree.

    Only the changed components are checked against the parent's price in force.
    """
    _may_set_prices(principal)
    fields = update_paths(paths)
    given = {INPUT: input_micros, OUTPUT: output_micros}
    wanted = _amounts({field: given[field] for field in fields})
    price = await price_in_subtree(principal, price_id, "price.name")
    await _check_not_below_parent(price.account, price.model, wanted)
    if not await Price.filter(id=price.id).update(**wanted, updated_at=now):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "price.name: price not found.")
    await price.refresh_from_db()
    await _outlive_leases(price.account, price.model, now)
    return price


async def delete_price(principal: Principal, price_id: int, now: datetime | None = None) -> None:
    """Remove a price of the caller's subtree; its account falls back to its ancestors' prices."""
    _may_set_prices(principal)
    price = await price_in_subtree(principal, price_id)
    if not await Price.filter(id=price.id).delete():
        raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: price not found.")
    await _outlive_leases(price.account, price.model, now)
