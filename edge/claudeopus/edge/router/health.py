"""Outlier ejection: deployments that keep failing are skipped for a while, then probed once.

A deployment that fails ``failures`` times in a row (connect failure, timeout before the answer
started, 5xx) is *ejected*: skipped for a cool-down of ``first_cooldown`` seconds, doubled on each
ejection in a row up to ``max_cooldown``. Once the cool-down has passed, a single request may try
it (the probe) while every other request still skips it: a success restores it (and resets the
growth), a failure ejects it again for the next, longer cool-down. An upstream 429 with
``Retry-After`` cools the deployment for that long (capped at ``max_cooldown``) without counting
as a failure: the provider said when to come back.

The state is this edge's own; times are ``time.monotonic()`` values passed in by the caller.

Example::

    health = Health(EjectionPolicy())
    if health.begin(deployment, now):     # False: cooling down, or another request is probing it
        ...                               # try it, then one of:
        health.succeeded(deployment)
        health.failed(deployment, now)
        health.rate_limited(deployment, now, retry_after=30.0)
        health.abandoned(deployment)      # the client left first: no verdict
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["PROBE_WAIT_SECONDS", "EjectionPolicy", "Health"]

# What Retry-After says of a deployment a probe is trying: its verdict is due within about this long.
PROBE_WAIT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    failures: int = 3  # failures in a row that eject a deployment
    first_cooldown: float = 5.0  # seconds skipped after the first ejection; doubled on each one in a row
    max_cooldown: float = 300.0  # the longest cool-down, and the cap on an upstream's Retry-After

    def __post_init__(self) -> None:
        if self.failures < 1 or not 0 < self.first_cooldown <= self.max_cooldown:
            raise ValueError("ejection needs failures >= 1 and 0 < first_cooldown <= max_cooldown")


@dataclass(slots=True)
class _State:
    failures: int = 0  # in a row, since the last success or ejection
    ejections: int = 0  # in a row, since the last success
    cooled_until: float = 0.0
    probing: bool = False  # a request is trying it after its cool-down


class Health:
    """The ejection state of every deployment this edge has tried (see the module docstring)."""

    __slots__ = ("_policy", "_states")

    def __init__(self, policy: EjectionPolicy) -> None:
        self._policy = policy
        self._states: dict[Hashable, _State] = {}

    def begin(self, deployment: Hashable, now: float) -> bool:
        """Whether a request may try ``deployment`` now; once past its cool-down, only one at a time."""
        state = self._states.get(deployment)
        if state is None or (state.cooled_until == 0.0 and not state.probing):
            return True
        if now < state.cooled_until or state.probing:
            return False
        state.probing = True
        return True

    def succeeded(self, deployment: Hashable) -> None:
        self._states.pop(deployment, None)

    def failed(self, deployment: Hashable, now: float) -> None:
        state = self._states.setdefault(deployment, _State())
        state.failures += 1
        if state.probing or state.failures >= self._policy.failures:
            cooldown = self._policy.first_cooldown * 2 ** min(state.ejections, 32)
            state.cooled_until = now + min(cooldown, self._policy.max_cooldown)
            state.ejections += 1
            state.failures = 0
        state.probing = False

    def abandoned(self, deployment: Hashable) -> None:
        """The attempt ended with no verdict on the upstream (the client left): another may probe."""
        state = self._states.get(deployment)
        if state is not None:
            state.probing = False

    def rate_limited(self, deployment: Hashable, now: float, retry_after: float) -> None:
        """The upstream answered 429 asking for ``retry_after`` seconds: skip it that long."""
        state = self._states.setdefault(deployment, _State())
        until = now + min(max(retry_after, 0.0), self._policy.max_cooldown)
        state.cooled_until = max(state.cooled_until, until)
        state.probing = False

    def retry_after(self, deployments: tuple[Hashable, ...], now: float) -> float:
        """Seconds until the first of ``deployments`` may be tried again (0: one may be tried now)."""
        waits = []
        for deployment in deployments:
            state = self._states.get(deployment)
            if state is None or (now >= state.cooled_until and not state.probing):
                return 0.0
            waits.append(max(state.cooled_until - now, PROBE_WAIT_SECONDS))
        return min(waits, default=0.0)
