"""Price tables: set, read, list, change and remove prices, and resolve the price in force.

A price is set for one model on one account, in micro-units per million tokens.
The admin sets base prices on the root account; a reseller sets its markup on
its own account or on accounts below it. The price in force on an account is,
per component, the highest price for the model on the account and all its
ancestors, so nobody in a subtree is ever charged less than what its reseller
pays, even after an ancestor raises its price. A model with no price in force is
not served at all (``MODEL_NOT_AVAILABLE``, see ledger/keys.py); a zero price is a price.

Each price records the account that set it (``set_by``, null for old rows set on
the row's own account). Only that account or one above it may change or remove it
(``PRICE_SET_ABOVE``), so an account adds its markup but never removes or lowers
what was set above it: every row set above the caller stays in the maximum, and
the price in force anywhere never drops below it, whoever calls. A new or changed
price must not be below the price in force above its account (``PRICE_BELOW_PARENT``);
that check only guides the caller, the maximum rule is what guarantees it.

Nobody learns what lies above its own account beyond what it pays: a price set
above the caller is shown without its setter, and :func:`resolve` folds every
price set above the caller into one inherited figure, with no account ids.

Every lookup is confined to the caller's subtree; anything outside it is not
found. Users (the leaves of the hierarchy) may read prices but not set them.

Example::

    price = await create_price(principal, parent_id=None, model="gpt-x", input_micros=150, output_micros=250,
                               request_id="")
    resolved = await resolve(principal, account_id=None, model="gpt-x")
    cost = costs.cost_micros(1_000, 200, resolved.in_force.input_micros_per_million,
                             resolved.in_force.output_micros_per_million)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.queryset import QuerySet

from claudeopus.control.domain import policies, validation
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
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.ledger.leases.fence import outlive_leases
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


def setter_of(price: Price) -> int:
    """The account that set ``price`` (null ``set_by``: the price's own account)."""
    setter: int = price.set_by if price.set_by is not None else price.account_id  # type: ignore[attr-defined]
    return setter


def set_within(principal: Principal, chain: Sequence[int], price: Price) -> bool:
    """Whether ``price`` was set by the caller's account or one below it.

    ``chain`` is the ids from the root down to the price's account (or an account below
    it); the caller's account is on it, since the price is in the caller's subtree.
    """
    setter = setter_of(price)
    if setter not in chain or principal.account_id not in chain:
        return False
    return chain.index(setter) >= chain.index(principal.account_id)


@dataclass(frozen=True, slots=True)
class PriceView:
    """A price as the caller may see it: ``set_by`` is None when it was set above the caller."""

    price: Price
    set_by: int | None


def view(principal: Principal, chain: Sequence[int], price: Price) -> PriceView:
    """``price`` as the caller sees it; ``chain`` as for :func:`set_within`."""
    return PriceView(price, setter_of(price) if set_within(principal, chain, price) else None)


def seen_by(principal: Principal, price: Price) -> PriceView:
    """``price`` (read with its account) as the caller sees it."""
    return view(principal, price.account.ancestor_ids(), price)


@dataclass(frozen=True, slots=True)
class Inherited:
    """Per component, the highest of the prices set above the caller."""

    input_micros_per_million: int
    output_micros_per_million: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """The price in force on an account as the caller may know it.

    ``sources`` are the prices on the chain set by the caller's account or below it
    (the caller's account first); everything set above the caller is ``inherited``.
    """

    in_force: PriceInForce
    sources: list[PriceView]
    inherited: Inherited | None


async def resolve(principal: Principal, *, account_id: int | None, model: str) -> Resolved:
    """The price in force for ``model`` on ``account_id`` (default: the caller's own account)."""
    model = validation.model_name("model", model)
    account = await account_in_subtree(principal, account_id, "account")
    chain = account.ancestor_ids()
    rows = await chain_prices(chain, model)
    above = [row for row in rows if not set_within(principal, chain, row)]
    inherited = in_force(above)
    return Resolved(
        in_force=in_force(rows),
        sources=[PriceView(row, setter_of(row)) for row in rows if set_within(principal, chain, row)],
        inherited=Inherited(inherited.input_micros_per_million, inherited.output_micros_per_million)
        if inherited.priced
        else None,
    )


async def priced_models(account: Account) -> list[str]:
    """The models with a price in force on ``account`` (one query), sorted."""
    rows = await Price.filter(account_id__in=account.ancestor_ids()).distinct().values_list("model", flat=True)
    return sorted({str(model) for model in rows})


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


def _may_change(principal: Principal, price: Price) -> None:
    if not set_within(principal, price.account.ancestor_ids(), price):
        raise PermissionDenied(
            Reason.PRICE_SET_ABOVE, "This price was set above you; only that account can change or remove it."
        )


async def _check_not_below_parent(principal: Principal, account: Account, model: str, wanted: dict[str, int]) -> None:
    """Each component in ``wanted`` is at least the price in force above ``account``, and only an
    admin prices a model that nothing above ``account`` prices.

    That figure is one the caller can see anyway (ResolvePrice on the parent, or on its own
    account when ``account`` is the caller's own: then no price set above is on it).
    """
    parent_chain = account.ancestor_ids()[:-1]
    parent = in_force(await chain_prices(parent_chain, model))
    if not parent.priced:
        if parent_chain and principal.role is not Role.ADMIN:
            # A price makes a model available: a reseller adds its markup to a model priced above
            # it, never opens one the admin did not (it would be served at whatever price it chose).
            raise FailedPrecondition(
                Reason.MODEL_NOT_AVAILABLE,
                f"price.model: no price for '{model}' is set above this account; "
                "a model is made available by the admin's prices, and a reseller adds its markup to one.",
            )
        return
    floor = {INPUT: parent.input_micros_per_million, OUTPUT: parent.output_micros_per_million}
    below = [
        f"price.{field} {wanted[field]} is below {floor[field]}" for field in wanted if wanted[field] < floor[field]
    ]
    if below:
        where = "above your account" if account.id == principal.account_id else "on the parent account"
        raise FailedPrecondition(
            Reason.PRICE_BELOW_PARENT,
            f"{'; '.join(below)}, the price in force {where} for '{model}'.",
        )


async def price_in_subtree(principal: Principal, price_id: int, field: str = "name") -> Price:
    price = await Price.get_or_none(id=price_id).select_related("account")
    if price is None or not principal.owns(price.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: price not found.")
    return price


async def get_price(principal: Principal, price_id: int) -> PriceView:
    return seen_by(principal, await price_in_subtree(principal, price_id))


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
    price = await _create_price(principal, account, model, wanted, rid)
    await _outlive_leases(account, model, now)
    return price


async def _create_price(
    principal: Principal, account: Account, model: str, wanted: dict[str, int], rid: str | None
) -> Price:
    if rid is not None:
        earlier = await Price.get_or_none(account_id=account.id, create_request_id=rid).select_related("account")
        if earlier is not None:
            return _same_request(earlier, model, wanted)
    if await Price.exists(account_id=account.id, model=model):
        raise _exists()
    await _check_not_below_parent(principal, account, model, wanted)
    try:
        price = await Price.create(
            account=account,
            model=model,
            input_micros_per_million=wanted[INPUT],
            output_micros_per_million=wanted[OUTPUT],
            set_by=principal.account_id,
            create_request_id=rid,
        )
    except IntegrityError:
        if rid is not None:
            earlier = await Price.get_or_none(account_id=account.id, create_request_id=rid).select_related("account")
            if earlier is not None:
                return _same_request(earlier, model, wanted)
        raise _exists() from None
    return price


def _exists() -> AlreadyExists:
    return AlreadyExists(
        Reason.RESOURCE_EXISTS, "price.model: this account already has a price for this model; update it."
    )


async def _outlive_leases(account: Account, model: str, now: datetime | None, *, removed: bool = False) -> None:
    """Return once the leases that price ``model`` in ``account``'s subtree have ended.

    A lease that holds budget reserves each request's cost at the price in force when it was
    granted (see ledger/leases): after a change, no edge admits at the old price. A removed price
    may leave the model unpriced, hence not served: then every lease for it ends first.
    """
    await outlive_leases(account=account, model=model, unlimited=None if removed else False, now=now or utc_now())


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
    prices: list[PriceView]
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
    chain = account.ancestor_ids()
    return PricePage(prices=[view(principal, chain, row) for row in rows], next_page_token=next_token)


# -- update and delete -----------------------------------------------------------


def _unchanged_setter(price: Price) -> QuerySet[Price]:
    """The price's row, as long as its setter is still the one read."""
    return Price.filter(id=price.id, **policies.setter_is("set_by", price.set_by))


async def _change(principal: Principal, price_id: int, field: str, write: Callable[[Price], Awaitable[int]]) -> Price:
    """Read the price, check that the caller may change it, and ``write`` it (rows written).

    ``write`` acts only while the setter is the one checked (:func:`_unchanged_setter`): when
    another account took the price over meanwhile, the price is read and checked again.
    """
    while True:
        price = await price_in_subtree(principal, price_id, field)
        _may_change(principal, price)
        if await write(price):
            return price


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
    """Change the amounts named by ``paths`` of a price set by the caller's account or below it.

    Only the changed components are checked against the price in force above its account.
    The caller becomes its setter: accounts below it can no longer change it.
    """
    _may_set_prices(principal)
    fields = update_paths(paths)
    given = {INPUT: input_micros, OUTPUT: output_micros}
    wanted = _amounts({field: given[field] for field in fields})

    async def write(price: Price) -> int:
        await _check_not_below_parent(principal, price.account, price.model, wanted)
        return await _unchanged_setter(price).update(**wanted, set_by=principal.account_id, updated_at=now)

    price = await _change(principal, price_id, "price.name", write)
    await price.refresh_from_db()
    await _outlive_leases(price.account, price.model, now)
    return price


async def delete_price(principal: Principal, price_id: int, now: datetime | None = None) -> None:
    """Remove a price set by the caller's account or below it; its account falls back to its ancestors' prices."""
    _may_set_prices(principal)
    price = await _change(principal, price_id, "name", lambda price: _unchanged_setter(price).delete())
    await _outlive_leases(price.account, price.model, now, removed=True)
