"""What Authorize reads about a key, cached per control process, never staler than the database.

Authorizing needs the key (with its account), whether the account or an ancestor is
suspended, the budgets on the key's chain and the model's price in force (a model
without one is not served; cost budgets reserve at it). Those rows change rarely;
reading them costs four queries per request. So a control process keeps them per key
hash, filed under the **auth epoch**: a counter that database triggers bump in every
transaction that changes an account, a key, a budget or a price
(:class:`~claudeopus.control.models.AuthEpoch`), whichever replica made it.

Each authorize checks the epoch (for a cached key, inside the INSERT of its usage row:
no extra query). Same epoch: the cached context is exactly what a fresh read would give,
because nothing it depends on has committed since. A different epoch: the whole cache is
dropped and the key read again. A change therefore
reaches every control replica with the first authorize after its commit, the same moment
an uncached read would see it: a revoked key or a suspended account is refused at once,
a new budget holds the next request. What depends on the time (expiry, a rotated secret's
grace period, the budget period) is checked against each request's own clock, never cached.

Example::

    cache = AuthCache(max_keys=10_000)
    context = await cache.context(key_hash_hex)   # None: no key has this hash
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from claudeopus.control.domain import policies, prices, reservations
from claudeopus.control.domain.principal import find_key
from claudeopus.control.models import Account, AccountState, ApiKey, Budget
from claudeopus.control.store.auth_epoch import current_epoch

DEFAULT_MAX_KEYS = 10_000


@dataclass(slots=True)
class KeyContext:
    """Everything Authorize reads about one key hash, as of one epoch."""

    key: ApiKey
    suspended: bool
    budgets: list[Budget]
    # The account policies of the key's chain, together (models, management keys, lifetime).
    policy: policies.Policy = policies.UNBOUNDED
    # Price in force per model, read on first use: every authorize needs it (an unpriced model is not served).
    price_by_model: dict[str, prices.PriceInForce] = field(default_factory=dict)

    async def price(self, model: str) -> prices.PriceInForce:
        found = self.price_by_model.get(model)
        if found is None:
            found = prices.in_force(await prices.chain_prices(self.key.account.ancestor_ids(), model))
            self.price_by_model[model] = found
        return found


async def load_context(key_hash_hex: str) -> KeyContext | None:
    """Read a key's context from the database (no cache); None when no key has this hash."""
    key = await find_key(key_hash_hex)
    if key is None:
        return None
    chain = await Account.filter(id__in=key.account.ancestor_ids())  # suspension and policies: one read
    return KeyContext(
        key=key,
        suspended=any(account.state is AccountState.SUSPENDED for account in chain),
        budgets=await reservations.applicable_budgets(key),
        policy=policies.chain_policy(chain),
    )


class AuthCache:
    """Key contexts of the current epoch, at most ``max_keys`` of them (least recently used go first).

    Unknown hashes are not cached, so guessing keys cannot push real ones out.
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._epoch: int | None = None
        self._contexts: OrderedDict[str, KeyContext] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def cached(self, key_hash_hex: str) -> tuple[KeyContext, int] | None:
        """The context cached for this hash and the epoch it is filed under, without asking the database.

        The caller must make sure the epoch is still current before it acts on the context
        (the usage row's INSERT checks it, see :func:`~claudeopus.control.store.usage_rows.open_record`),
        and call :meth:`forget` when it is not.
        """
        context = self._contexts.get(key_hash_hex)
        if context is None or self._epoch is None:
            return None
        self._contexts.move_to_end(key_hash_hex)
        return context, self._epoch

    def forget(self, epoch: int) -> None:
        """The epoch moved on from ``epoch``: drop what was filed under it."""
        if self._epoch == epoch:
            self._contexts.clear()
            self._epoch = None

    async def context(self, key_hash_hex: str) -> KeyContext | None:
        return await self.context_at(await current_epoch(), key_hash_hex)

    async def context_at(self, epoch: int, key_hash_hex: str) -> KeyContext | None:
        """:meth:`context` under ``epoch``, which the caller read with
        :func:`~claudeopus.control.store.auth_epoch.current_epoch` just before
        (a batch reads it once for all its keys)."""
        if epoch != self._epoch:
            # Filed under the epoch read *before* the rows: a change committed in between makes
            # the cached rows newer than their epoch, never older, and the next read starts over.
            self._contexts.clear()
            self._epoch = epoch
        cached = self._contexts.get(key_hash_hex)
        if cached is not None:
            self._contexts.move_to_end(key_hash_hex)
            return cached
        loaded = await load_context(key_hash_hex)
        if loaded is not None and self._max_keys > 0 and self._epoch == epoch:
            self._contexts[key_hash_hex] = loaded
            while len(self._contexts) > self._max_keys:
                self._contexts.popitem(last=False)
        return loaded
