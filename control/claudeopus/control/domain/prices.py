"""Price tables: the price in force on an account, and reading, listing and resolving prices.

A price is set for one model on one account, in micro-units per million tokens.
The admin sets base prices on the root account; a reseller sets its markup on
its own account or on accounts below it. The price in force on an account is,
per component, the highest price for the model on the account and all its
ancestors, so nobody in a subtree is ever charged less than what its reseller
pays, even after an ancestor raises its price. A model with no price in force is
not served at all (``MODEL_NOT_AVAILABLE``, see gateway.py); a zero price is a price.
Setting, changing and removing prices, and the rules for that, are in
:mod:`~claudeopus.control.domain.price_changes`.

Nobody learns what lies above its own account beyond what it pays: a price set
above the caller is shown without its setter, and :func:`resolve` folds every
price set above the caller into one inherited figure, with no account ids.

Every lookup is confined to the caller's subtree; anything outside it is not found.

Example::

    resolved = await resolve(principal, account_id=None, model="gpt-x")
    cost = costs.cost_micros(1_000, 200, resolved.in_force.input_micros_per_million,
                             resolved.in_force.output_micros_per_million)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from claudeopus.control.domain import validation
from claudeopus.control.domain.accounts import account_in_subtree
from claudeopus.control.domain.errors import NotFound, Reason
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, Price

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
    return sorted(rows, key=lambda row: order[row.account_id])


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
    setter: int = price.set_by if price.set_by is not None else price.account_id
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


# -- read ----------------------------------------------------------------------


async def price_in_subtree(principal: Principal, price_id: int, field: str = "name") -> Price:
    price = await Price.get_or_none(id=price_id).select_related("account")
    if price is None or not principal.owns(price.account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: price not found.")
    return price


async def get_price(principal: Principal, price_id: int) -> PriceView:
    return seen_by(principal, await price_in_subtree(principal, price_id))


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
