"""Checking the API key before the request body is read.

A request's body is read and parsed only once its key is known to control: an unknown,
revoked or expired key is refused from its header alone, so a large or crafted body sent
without a valid key costs the edge nothing but the refusal. The check is cheap: control
answers a key once (VerifyApiKey), and the edge remembers the answer for a short while
(``ttl``); keys that control just authorized, or that hold a lease here, are known already.

This only decides whether the body is worth reading. Each request is still authorized
(or admitted from a lease) on its own, so a key revoked a moment ago reads its body but
is refused as before.

Example::

    check = KeyCheck(control, ttl=5.0)
    key_hash = await check.check(secret)   # or the key's OpenAIError (401, 403, 503)
    check.remember(key_hash)               # control authorized this key just now
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from claudeopus.edge import errors
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.refusals import key_hash, verified

__all__ = ["KNOWN_KEY_SECONDS", "KeyCheck"]

KNOWN_KEY_SECONDS = 5.0
# Bounds on what is remembered: keys that exist, and keys refused (a flood of made-up keys
# only ever empties the refusals, never the keys serving traffic).
MAX_KNOWN = 100_000
MAX_REFUSED = 10_000


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A refusal to answer again (a fresh error each time: the forwarder adds headers to its own)."""

    until: float
    kind: type[errors.OpenAIError]
    message: str
    code: str | None

    def error(self) -> errors.OpenAIError:
        return self.kind(self.message, code=self.code)


class KeyCheck:
    """Keys known to control within the last ``ttl`` seconds, and keys it refused."""

    def __init__(
        self,
        control: ControlPort,
        ttl: float = KNOWN_KEY_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_known: int = MAX_KNOWN,
        max_refused: int = MAX_REFUSED,
    ) -> None:
        self._control = control
        self._ttl = ttl
        self._clock = clock
        self._max_known = max_known
        self._max_refused = max_refused
        self._known: dict[bytes, float] = {}
        self._refused: dict[bytes, _Refusal] = {}

    async def check(self, secret: str) -> bytes:
        """The key's hash once control knows the key; else its refusal (503 when control cannot say)."""
        hashed = key_hash(secret)  # a string that cannot be a key: 401 here
        now = self._clock()
        until = self._known.get(hashed)
        if until is not None and until > now:
            return hashed
        refusal = self._refused.get(hashed)
        if refusal is not None and refusal.until > now:
            raise refusal.error()
        try:
            await verified(self._control, hashed)
        except (errors.AuthenticationFailed, errors.PermissionDenied) as error:
            if len(self._refused) >= self._max_refused:
                self._refused.clear()
            self._refused[hashed] = _Refusal(now + self._ttl, type(error), error.message, error.code)
            raise
        self.remember(hashed)
        return hashed

    def remember(self, hashed: bytes) -> None:
        """Control authorized this key just now: its next requests need no VerifyApiKey."""
        now = self._clock()
        self._refused.pop(hashed, None)
        self._known.pop(hashed, None)  # re-inserted last: the dict stays in expiry order
        if len(self._known) >= self._max_known:
            self._known = {key: until for key, until in self._known.items() if until > now}
            while len(self._known) >= self._max_known:
                del self._known[next(iter(self._known))]  # the oldest
        self._known[hashed] = now + self._ttl
