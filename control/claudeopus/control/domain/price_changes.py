"""Setting prices: create, change and remove them, under the rules that keep markups above cost.

Each price records the account that set it (``set_by``, null for old rows set on
the row's own account). Only that account or one above it may change or remove it
(``PRICE_SET_ABOVE``), so an account adds its markup but never removes or lowers
what was set above it: every row set above the caller stays in the maximum, and
the price in force anywhere never drops below it, whoever calls. A new or changed
price must not be below the price in force above its account (``PRICE_BELOW_PARENT``);
that check only guides the caller, the maximum rule is what guarantees it. Users
(the leaves of the hierarchy) may read prices but not set them. Every change holds
on every edge when it returns (see :func:`_outlive_leases`).

Example::

    price = await create_price(principal, parent_id=None, model="gpt-x", input_micros=150, output_micros=250,
                               request_id="")
    await update_price(principal, price.id, paths=[INPUT], input_micros=200, output_micros=0, now=now)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.domain.prices import chain_prices, in_force, price_in_subtree, set_within
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, Price, Role

MAX_AMOUNT = 10**12
INPUT = "input_micros_per_million"
OUTPUT = "output_micros_per_million"
UPDATABLE_FIELDS = (INPUT, OUTPUT)


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
    granted (see leases.py): after a change, no edge admits at the old price. A removed price
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
    fields = validation.update_paths(paths, UPDATABLE_FIELDS)
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
