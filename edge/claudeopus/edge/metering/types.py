"""The edge's own metering types: what a request used, and what leases hold.

They know nothing of gRPC: the control port turns them into the gateway's messages, so the
spool, the lease journal and the request path never import generated code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "KeyInfo",
    "Lease",
    "LeaseUse",
    "LeasedReservation",
    "Outcome",
    "RecoveredLease",
    "Settlement",
    "UsageSource",
    "UsageStatus",
]


class UsageStatus(enum.IntEnum):
    """How a request ended (the numbers are the contract's ``UsageStatus``)."""

    SUCCEEDED = 2
    UPSTREAM_ERROR = 3
    CLIENT_DISCONNECTED = 4


class UsageSource(enum.IntEnum):
    """Where a settle's token counts come from (the numbers are the contract's ``UsageSource``)."""

    REPORTED = 1
    ESTIMATED = 2


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key may use: the models priced on its chain (None: not known), narrowed by its own list (empty: all)."""

    allowed_models: tuple[str, ...]
    priced_models: frozenset[str] | None = None

    def may_use(self, model: object) -> bool:
        priced = self.priced_models is None or model in self.priced_models
        return priced and (not self.allowed_models or model in self.allowed_models)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a forwarded request ended, as settled with control."""

    input_tokens: int
    output_tokens: int
    status: UsageStatus
    source: UsageSource
    http_status: int

    @classmethod
    def failed(cls, http_status: int) -> Outcome:
        """Nothing used: the request failed before the upstream produced anything (or was never forwarded)."""
        return cls(0, 0, UsageStatus.UPSTREAM_ERROR, UsageSource.ESTIMATED, http_status)


@dataclass(frozen=True, slots=True)
class LeasedReservation:
    """What the edge reserved for one request it admitted from a lease; its settle opens the row."""

    lease_id: str
    estimated_input_tokens: int
    max_output_tokens: int
    reserved_cost_micros: int
    stream: bool
    reserve_time_ns: int  # wall clock, nanoseconds since 1970


@dataclass(frozen=True, slots=True)
class Settlement:
    """One request's settle: how it ended and how long it took. Sent to control, or spooled."""

    request_id: str
    outcome: Outcome
    latency_ns: int
    # Admitted from a lease: this settle opens the request's row.
    leased: LeasedReservation | None = None
    # Control may never have opened this reservation (its authorize timed out): not finding it is fine.
    missing_ok: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """A slice of a key's budgets control leased to this edge (GrantLease), as granted."""

    lease_id: str
    ttl: float
    unlimited: bool
    input_tokens: int
    output_tokens: int
    cost_micros: int
    prices: tuple[int, int] | None  # (input, output) per million tokens, when a cost budget counts
    default_output_tokens: int
    caps_output: bool


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """What this edge admitted from one lease in all, when it gives the lease back."""

    lease_id: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class RecoveredLease:
    """A lease a dead process of this edge held, and the requests it admitted whose settle was lost."""

    lease_id: str
    lost: Sequence[tuple[str, LeasedReservation]]  # (request id, its reservation)
    release_rest: bool  # the journal is complete: control may release what the lease still holds
