"""An in-memory control for the edge's tests: a ``ControlPort`` that says yes and keeps count.

Every key may use every model, every request is authorized without an output cap, every
settle is taken, no lease is granted. Tests subclass it to script the answers they need.

Example::

    class Down(FakeControl):
        async def settle_batch(self, settles):
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    app = build_app(settings, control_factory=lambda channel, settings: Down())
"""

from __future__ import annotations

from collections.abc import Sequence

from claudeopus.client import ClaudeOpusError
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.port import AuthorizeCall
from claudeopus.edge.metering.types import KeyInfo, Lease, LeaseUse, RecoveredLease, Settlement

__all__ = ["FakeControl"]


class FakeControl:
    """Answers yes to everything and records what it was asked (see the module docstring)."""

    def __init__(self) -> None:
        self.verified: list[bytes] = []
        self.authorized: list[str] = []
        self.settles: list[Settlement] = []
        self.returned: list[LeaseUse] = []
        self.recovered: list[list[RecoveredLease]] = []

    async def verify(self, key_hash: bytes) -> KeyInfo:
        self.verified.append(key_hash)
        return KeyInfo(allowed_models=())

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        self.authorized.extend(call.request_id for call in calls)
        return [0] * len(calls)

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        self.settles.extend(settles)
        return [None] * len(settles)

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        return None

    async def return_leases(self, uses: Sequence[LeaseUse]) -> None:
        self.returned.extend(uses)

    async def recover_leases(self, recovered: Sequence[RecoveredLease]) -> int:
        self.recovered.append(list(recovered))
        return sum(len(entry.lost) for entry in recovered)
