"""A wall clock the test moves by hand, for code that takes ``clock: Callable[[], datetime]``.

Example::

    clock = FakeClock(datetime(2030, 1, 10, tzinfo=UTC))
    async with ControlServer(settings, clock=clock) as server:
        clock.advance(60)            # a minute later, without sleeping
        clock.now = some_other_time  # or set it outright
"""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """Returns ``now`` when called; tests set ``now`` or :meth:`advance` it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
