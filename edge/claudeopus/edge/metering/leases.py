"""Budget leases at the edge: admit requests from a slice of a key's budgets without asking control.

With ``CLAUDEOPUS_LEASE_SECONDS`` above 0 (1 s by default), after a request of a key and model was authorized
with control the edge asks control, in the background, for a lease (GrantLease): a slice
of every budget on the key's chain, a whole number of requests like that one, or nothing
when a budget is near its limit. While it holds a live lease, a request of that key and
model is admitted here: its worst case (input bound, output cap or the model's default,
their cost at the lease's prices) is counted against what is left of the slice, and it is
forwarded at once. Its settle carries the reservation (``LeasedReservation``) and opens its usage row
at control. A lease is given back (ReturnLeases) when its time is up, when a request no
longer fits in it, and at shutdown; control releases what was not used. Once a lease is half used (or half its time
is gone) its successor is asked for, so a busy key goes from lease to lease without a request
waiting for control in between: an edge holds at most two leases per key and model (one near a
limit, where leases are small).

What leases change, and why it is bounded:

- A revocation, suspension, expiry, budget or price change reaches this edge within the
  lease's time (CLAUDEOPUS_LEASE_SECONDS), not at once; so control's call that makes it
  returns only once the leases it concerns have ended (control's lease_fence.py).
- Spending still cannot pass a limit: a lease is held in the budgets like a reservation.
  Admission near a limit stays exact: no lease is granted there, and a request refused while
  a slice another edge holds keeps the rest is authorized again once that lease is back
  (authorizer.py).
- When control cannot be reached (a settle, a grant or a return fails with UNAVAILABLE or
  times out), every lease is dropped: from then on requests fail closed (503) as without
  leases, until control authorizes again.
- If the edge process dies, the next one started on its spool directory recovers what it
  held from its lease journal (lease_journal.py, lease_recovery.py): each request it admitted
  whose settle was lost gets its own row, expired and charged its reservation, and what the
  leases still held is released — as without leases. Only if no process starts there again
  (or the machine itself crashed) does control's sweeper charge what a lease still holds, as
  one expired row, when it ends.

Example::

    book = LeaseBook(control, seconds=1.0)
    admission = book.admit(key_hash, completion, request_id)  # None: authorize with control instead
    book.want(key_hash, completion)  # after an authorize: lease the next ones
    await book.aclose()  # gives every lease back
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.costs import capped_cost_micros
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.journal import LeaseJournal
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.types import Lease, LeasedReservation, LeaseUse
from claudeopus.edge.tasks import finish

_log = logging.getLogger(__name__)
RETURN_BATCH = 1000
# A key and model that got no lease (near a limit, or refused) is not asked about again for this long.
NO_LEASE_BACKOFF_SECONDS = 1.0
MAX_QUIET_KEYS = 10_000
# A lease for fewer requests than this (near a budget's limit) gets no successor asked for ahead.
MIN_REQUESTS_FOR_SUCCESSOR = 8
_Key = tuple[bytes, str]


@dataclass(frozen=True, slots=True)
class Admission:
    """A request admitted from a lease: ``leased`` goes with its settle, ``cap`` upstream (0: none)."""

    leased: LeasedReservation
    cap: int


@dataclass(slots=True)
class _Held:
    lease: Lease
    deadline: float
    input_left: int
    output_left: int
    cost_left: int
    requests: int = 0
    used: list[int] = field(default_factory=lambda: [0, 0, 0])

    def use(self) -> LeaseUse:
        return LeaseUse(self.lease.lease_id, self.requests, *self.used)


class LeaseBook:
    """The leases this edge holds, per key hash and model; one owned task asks for and returns them.

    ``seconds`` 0 turns leasing off: the book then admits nothing and asks for nothing.
    """

    def __init__(
        self,
        control: ControlPort,
        seconds: float,
        *,
        journal: LeaseJournal | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._control = control
        self._journal = journal
        self._seconds = seconds
        self._clock = clock
        self._wall_ns = wall_ns
        self._held: dict[_Key, _Held] = {}
        self._next: dict[_Key, _Held] = {}  # granted while the one in use was still running
        self._wanted: dict[_Key, CompletionRequest] = {}
        self._quiet_until: dict[_Key, float] = {}
        self._returns: list[LeaseUse] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def admit(self, key_hash: bytes, completion: CompletionRequest, request_id: str) -> Admission | None:
        """Admit the request from a live lease of its key and model, or None (authorize it instead).

        An admitted request is in the journal before this returns, so a process killed while
        it is in flight leaves what the next one needs to give it its row (lease_recovery.py).

        When the lease is half used (or half its time is gone) its successor is asked for, so
        a busy key moves from lease to lease without a request going to control in between.
        """
        key = (key_hash, completion.model)
        journal = self._journal
        for _ in range(2):  # the lease in use, then its successor if that one is spent
            held = self._held.get(key)
            if held is None or self._closing or (journal is not None and journal.full):
                return None
            if self._clock() >= held.deadline:
                self._retire(key)
                continue
            admission = self._take(held, completion)
            if admission is None:
                self._retire(key)  # give back what is left; an authorize may bring a new lease
                continue
            if journal is not None:
                journal.admitted(request_id, admission.leased)  # room was checked above
            if key not in self._next and key not in self._wanted and self._half_gone(held):
                self._wanted[key] = completion
                self._start()
                self._wake.set()
            return admission
        return None

    def _half_gone(self, held: _Held) -> bool:
        """Time to ask for a successor: half the lease's time or amounts are gone (small leases, near
        a budget's limit, get none: there a second slice would keep budget from other edges)."""
        lease = held.lease
        if not lease.unlimited and lease.output_tokens < MIN_REQUESTS_FOR_SUCCESSOR * held.used[1] / held.requests:
            return False
        if self._clock() >= held.deadline - lease.ttl / 2:
            return True
        return not lease.unlimited and (
            2 * held.input_left < lease.input_tokens
            or 2 * held.output_left < lease.output_tokens
            or 2 * held.cost_left < lease.cost_micros
        )

    def _take(self, held: _Held, completion: CompletionRequest) -> Admission | None:
        """Count the request against ``held``; None when it does not fit.

        Its output is counted for every choice it asks for (n, best_of); an injected cap is per choice.
        """
        lease = held.lease
        input_tokens = completion.input_token_bound
        per_choice = completion.max_output_tokens or lease.default_output_tokens
        output_tokens = per_choice * completion.choices
        cost = capped_cost_micros(input_tokens, output_tokens, *lease.prices) if lease.prices else 0
        if not lease.unlimited:
            if input_tokens > held.input_left or output_tokens > held.output_left or cost > held.cost_left:
                return None
            held.input_left -= input_tokens
            held.output_left -= output_tokens
            held.cost_left -= cost
        held.requests += 1
        held.used[0] += input_tokens
        held.used[1] += output_tokens
        held.used[2] += cost
        leased = LeasedReservation(
            lease.lease_id, input_tokens, output_tokens, cost, completion.stream, self._wall_ns()
        )
        cap = per_choice if lease.caps_output and not completion.max_output_tokens else 0
        return Admission(leased, cap)

    def want(self, key_hash: bytes, completion: CompletionRequest) -> None:
        """A request of this key and model was just authorized with control: lease the next ones."""
        key = (key_hash, completion.model)
        if not self._seconds or self._closing or key in self._held or key in self._wanted:
            return
        quiet = self._quiet_until.get(key)
        if quiet is not None:
            if quiet > self._clock():
                return
            del self._quiet_until[key]
        self._wanted[key] = completion
        self._start()
        self._wake.set()

    def settled(self, request_ids: Iterable[str]) -> None:
        """Control or the spool took the settles of these requests admitted from leases: the journal forgets them."""
        if self._journal is not None:
            self._journal.settled(request_ids)

    def drop_all(self) -> None:
        """Control could not be reached: stop admitting from any lease until it is back.

        Every lease is given back (when control answers again); the next requests are
        authorized with control, so while it is down they fail closed with 503 as without
        leases, and the first one it authorizes again brings a new lease.
        """
        if not (self._held or self._next or self._wanted):
            return
        _log.warning("control unreachable: %d lease(s) dropped until it answers again", len(self._held))
        for book in (self._held, self._next):
            self._returns.extend(held.use() for held in book.values())
            book.clear()
        self._wanted.clear()
        self._start()
        self._wake.set()

    def _retire(self, key: _Key) -> None:
        """Give the lease in use back; its successor, if one was granted, takes its place."""
        held = self._held.pop(key)
        self._returns.append(held.use())
        successor = self._next.pop(key, None)
        if successor is not None:
            self._held[key] = successor
        self._start()
        self._wake.set()

    def _start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-book")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_deadline()):
                    await self._wake.wait()
            self._wake.clear()
            now = self._clock()
            for key in [key for key, held in self._next.items() if held.deadline <= now]:
                self._returns.append(self._next.pop(key).use())
            for key in [key for key, held in self._held.items() if held.deadline <= now]:
                self._retire(key)
            self._wake.clear()
            while self._wanted and not self._closing:
                key, completion = next(iter(self._wanted.items()))
                await self._grant(key, completion)
                self._wanted.pop(key, None)  # drop_all may have cleared it meanwhile
            await self._send_returns()
            if self._closing:
                return
            if len(self._quiet_until) > MAX_QUIET_KEYS:
                now = self._clock()
                self._quiet_until = {key: until for key, until in self._quiet_until.items() if until > now}

    def _next_deadline(self) -> float | None:
        if not self._held:
            return None
        return max(0.0, min(held.deadline for held in self._held.values()) - self._clock())

    async def _grant(self, key: _Key, completion: CompletionRequest) -> None:
        asked = self._clock()
        try:
            lease = await self._control.grant_lease(key[0], completion, self._seconds)
        except UnavailableError:
            self.drop_all()
            lease = None
        except ClaudeOpusError as error:
            _log.debug("no lease: control answered %s %s", error.code.name, error.reason or "(no reason)")
            lease = None
        except Exception as error:  # the request path never depends on a lease: log and go on
            _log.warning("asking for a lease failed: %s", type(error).__name__)
            lease = None
        if lease is None:
            self._quiet_until[key] = self._clock() + NO_LEASE_BACKOFF_SECONDS
            return
        self._quiet_until.pop(key, None)
        # Counted from when it was asked for: control's clock started later, never earlier.
        held = _Held(lease, asked + lease.ttl, lease.input_tokens, lease.output_tokens, lease.cost_micros)
        journaled = self._journal is None or self._journal.lease_held(lease.lease_id)
        if self._closing or key in self._next or not journaled:
            self._returns.append(held.use())  # too late, or one is waiting already: give it straight back
        elif key in self._held:
            self._next[key] = held
        else:
            self._held[key] = held

    async def _send_returns(self) -> None:
        while self._returns:
            batch = self._returns[:RETURN_BATCH]
            try:
                await self._control.return_leases(batch)
            except Exception as error:  # kept and tried again; control's sweeper is the net
                _log.warning("returning %d lease(s) failed: %s; will retry", len(batch), type(error).__name__)
                if isinstance(error, UnavailableError):
                    self.drop_all()
                if self._closing:
                    return
                await asyncio.sleep(NO_LEASE_BACKOFF_SECONDS)
                continue
            del self._returns[: len(batch)]
            if self._journal is not None:
                for use in batch:
                    self._journal.lease_returned(use.lease_id)

    async def aclose(self) -> None:
        """Stop admitting, give every lease back (within a grace period) and stop the task."""
        self._closing = True
        for book in (self._held, self._next):
            self._returns.extend(held.use() for held in book.values())
            book.clear()
        self._wanted.clear()
        if self._task is None and self._returns:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-book")
        if self._task is not None:
            self._wake.set()
            await finish(self._task)
            self._task = None
        if self._returns:
            _log.warning("%d lease(s) not returned at shutdown: control's sweeper will close them", len(self._returns))
