"""Per-caller attempt limits held in memory by one control process (token buckets).

A :class:`Throttle` allows ``limit`` attempts per ``window`` seconds for each key
(an email, a client address, a caller's account): a full bucket holds ``limit``
attempts and refills one every ``window / limit`` seconds. It remembers at most
``max_keys`` keys, dropping the least recently used first, so a flood of new keys
costs bounded memory. Each control replica counts on its own: with N replicas a
caller gets at most N times the limit, which still bounds a flood.

Example::

    logins = Throttle(limit=5, window=60.0)
    logins.take("203.0.113.7", "Too many login attempts from this address.")  # raises Throttled when spent
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from claudeopus.control.domain.errors import AlreadyExists, Reason, Throttled

T = TypeVar("T")
TOO_MANY_TAKEN = "Too many accounts refused for an email already in use; retry later."

MAX_KEYS = 100_000


class Throttle:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a throttle needs a positive limit and window")
        self._limit = float(limit)
        self._rate = limit / window  # attempts regained per second
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, at = self._buckets.get(key, (self._limit, now))
        return min(self._limit, tokens + max(0.0, now - at) * self._rate)  # a clock set back regains nothing

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again; 0 when it may now (nothing is spent)."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate

    def spend(self, key: Hashable) -> None:
        """Count one attempt of ``key`` (it may go below zero: the wait grows with every extra attempt)."""
        now = self._clock()
        tokens = self._tokens(key, now)
        self._buckets[key] = (max(tokens - 1, -self._limit), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def check(self, key: Hashable, message: str) -> None:
        """Raise :class:`Throttled` when ``key`` has no attempt left (nothing is spent)."""
        wait = self.retry_after(key)
        if wait > 0:
            raise Throttled(message, retry_after=math.ceil(wait * 1000) / 1000)

    def take(self, key: Hashable, message: str) -> None:
        """Check, then spend one attempt of ``key``."""
        self.check(key, message)
        self.spend(key)


@dataclass(frozen=True, slots=True)
class Throttles:
    """The throttles one control process holds (see ControlSettings for the numbers)."""

    login_per_address: Throttle  # every Login attempt, keyed by the client's address
    login_per_email: Throttle  # failed Login attempts and wrong current passwords, keyed by email
    email_probes: Throttle  # account creations refused because the email is taken, keyed by the caller's account


async def email_probe(throttle: Throttle, caller: int, change: Callable[[], Awaitable[T]]) -> T:
    """Run ``change`` (a create or an email change by ``caller``'s account), counting a taken email.

    Emails are unique across the installation, so "already exists" tells a reseller that an
    address belongs to somebody, maybe outside its subtree. The answer is the same wherever the
    address is used; after a few such refusals the caller must wait, whatever email it tries next.
    ``caller`` is the caller's tenant (:attr:`Principal.tenant_id`), so a reseller cannot multiply
    its allowance by probing through accounts it creates below it.
    """
    throttle.check(caller, TOO_MANY_TAKEN)
    try:
        return await change()
    except AlreadyExists as error:
        if error.reason is Reason.RESOURCE_EXISTS:
            throttle.spend(caller)
        raise


__all__ = ["Throttle", "Throttles", "email_probe"]
