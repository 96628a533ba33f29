"""Metering: what the request path asks about keys, budgets and usage, behind one object.

A request's key is checked before its body is read (:meth:`Metering.authenticate`). The
parsed request is admitted (:meth:`Metering.admit`) and answered with a :class:`Ticket`, or
refused with the OpenAI error the client gets; once the upstream's answer has been relayed,
the ticket settles what the request used (:meth:`Ticket.settle`), exactly once.

Behind it, hidden from the request path:

- admission from a budget lease this edge holds (:mod:`~claudeopus.edge.metering.leases`),
  or else a batched authorize with control (:mod:`~claudeopus.edge.metering.authorizer`),
  asked again while leases hold what a budget has left;
- batched settles, spooled to disk while control is unreachable and replayed when it is back
  (:mod:`~claudeopus.edge.metering.settler`);
- the lease journal, and the recovery of what a dead process of this edge held from leases.

Example::

    metering = await Metering.start(control, spool_dir="spool", spool_max_bytes=64 << 20, control_timeout=5.0)
    hashed = await metering.authenticate(secret)           # before the body is read
    ticket = await metering.admit(hashed, completion, started)
    ...                                                    # forward with ticket.cap, relay
    ticket.settle(outcome)
    await metering.aclose()
"""

from __future__ import annotations

import os
import uuid

from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.key_check import KeyCheck
from claudeopus.edge.metering.authorizer import Authorizer
from claudeopus.edge.metering.journal import LeaseJournal, old_journals
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.port import ControlPort
from claudeopus.edge.metering.recovery import LeaseRecovery
from claudeopus.edge.metering.refusals import AuthorizeTimedOut, key_hash, verified
from claudeopus.edge.metering.settler import Settler
from claudeopus.edge.metering.types import KeyInfo, LeasedReservation, Outcome

__all__ = ["Metering", "Ticket"]

# The settle of a request that was authorized (perhaps) but never forwarded.
NOTHING_USED = Outcome.failed(503)


class Ticket:
    """An admitted request: its id, the output cap the upstream must get (0: none needed), and its settle."""

    __slots__ = ("_leased", "_settler", "_started", "cap", "request_id")

    def __init__(
        self, request_id: str, cap: int, settler: Settler, started: float, leased: LeasedReservation | None = None
    ) -> None:
        self.request_id = request_id
        self.cap = cap
        self._settler = settler
        self._started = started
        self._leased = leased

    def settle(self, outcome: Outcome) -> None:
        """Settle what the request used, in the background; call it exactly once."""
        self._settler.submit(self.request_id, outcome, self._started, leased=self._leased)


class Metering:
    """Admit requests and settle what they used; see the module docstring. Built by :meth:`start`."""

    def __init__(
        self,
        control: ControlPort,
        *,
        control_timeout: float,
        leases: LeaseBook,
        settler: Settler,
        journal: LeaseJournal | None,
        recovery: LeaseRecovery,
    ) -> None:
        self._control = control
        self._key_check = KeyCheck(control)
        self._authorizer = Authorizer(control, control_timeout)
        self._leases = leases
        self._settler = settler
        self._journal = journal
        self._recovery = recovery

    @classmethod
    async def start(
        cls,
        control: ControlPort,
        *,
        spool_dir: str | os.PathLike[str],
        spool_max_bytes: int,
        control_timeout: float,
        lease_seconds: float = 0.0,
        settle_linger: float = 0.0,
    ) -> Metering:
        """Open the spool (taking its directory's lock) and start replaying it and recovering what
        earlier processes left; ``lease_seconds`` 0 turns budget leases off."""
        # Numbered after every journal there: those an earlier process left are recovered below.
        journal = LeaseJournal.create(spool_dir) if lease_seconds else None
        leases = LeaseBook(control, lease_seconds, journal=journal)
        try:
            settler = await Settler.start(
                control,
                spool_dir,
                spool_max_bytes,
                linger=settle_linger,
                leases=leases,
            )
        except BaseException:
            if journal is not None:
                journal.close()  # empty: another process has the directory
            raise
        below = journal.number if journal is not None else None
        recovery = LeaseRecovery(control, old_journals(spool_dir, below=below), spool_idle=lambda: settler.spool_empty)
        recovery.start()
        return cls(
            control, control_timeout=control_timeout, leases=leases, settler=settler, journal=journal, recovery=recovery
        )

    async def authenticate(self, secret: str) -> bytes:
        """The key's hash once control knows the key, or its refusal (see key_check.py)."""
        return await self._key_check.check(secret)

    async def key_info(self, secret: str) -> KeyInfo:
        """What the key may use, asked of control now; or its refusal."""
        return await verified(self._control, key_hash(secret))

    async def admit(self, hashed: bytes, completion: CompletionRequest, started: float) -> Ticket:
        """Admit the request of the key :meth:`authenticate` passed (``hashed``), or raise its refusal.

        ``started``: the ``time.perf_counter()`` at which the request arrived; its settle counts
        its latency from there.
        """
        if self._settler.spool_full:
            raise errors.usage_spool_full()  # its usage could not be kept: admit nothing
        request_id = str(uuid.uuid4())
        admission = self._leases.admit(hashed, completion, request_id)
        if admission is not None:
            ticket = Ticket(request_id, admission.cap, self._settler, started, admission.leased)
        else:
            try:
                cap = await self._authorizer.authorize(request_id, hashed, completion)
            except AuthorizeTimedOut:
                # The answer never came, but the reservation may exist: release it at once (a
                # settle of nothing), instead of leaving it for the sweeper to charge in full.
                self._settler.submit(request_id, NOTHING_USED, started, missing_ok=True)
                raise
            self._leases.want(hashed, completion)
            ticket = Ticket(request_id, cap, self._settler, started)
        self._key_check.remember(hashed)
        return ticket

    async def aclose(self) -> None:
        """Stop admitting; give the leases back, send or spool every settle, stop replay and recovery."""
        await self._authorizer.aclose()  # first: a request it refuses may still settle
        await self._recovery.aclose()
        await self._leases.aclose()
        await self._settler.aclose()
        if self._journal is not None:
            self._journal.close()  # kept if a lease or settle it names did not reach control
