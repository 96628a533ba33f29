"""The edge's port to control's ledger: what metering asks of control, whatever carries it.

:class:`~claudeopus.edge.metering.grpc_control.GrpcControl` carries it over gRPC; tests and the
benchmark's bare relay implement it in memory. Every method raises
:class:`~claudeopus.client.ClaudeOpusError` when control refused or could not be reached;
:func:`~claudeopus.edge.metering.refusals.openai_error` says what the client gets then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from claudeopus.client import ClaudeOpusError
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.types import KeyInfo, Lease, LeaseUse, RecoveredLease, Settlement

__all__ = ["AuthorizeCall", "ControlPort"]


@dataclass(frozen=True, slots=True)
class AuthorizeCall:
    """One request to authorize: its id, its key's hash and what it asks for."""

    request_id: str
    key_hash: bytes
    completion: CompletionRequest


class ControlPort(Protocol):
    """Control's ledger as the edge uses it: keys, authorizes, settles and leases, in batches.

    Example::

        info = await control.verify(key_hash)
        [cap] = await control.authorize_batch([AuthorizeCall(request_id, key_hash, completion)])
        [refusal] = await control.settle_batch([settlement])
    """

    async def verify(self, key_hash: bytes) -> KeyInfo:
        """What the key may use; raises why control refuses it."""
        ...

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        """Reserve many requests in one call: per request, the output cap the upstream must get
        (0: none needed), or why control refused it.

        Raises when the call as a whole failed (DEADLINE_EXCEEDED: control may have reserved
        some of them all the same).
        """
        ...

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        """Settle many in one call: per settle, None when control took it, else why it refused it.

        Raises when the call as a whole failed (a repeat applies nothing twice: settles are
        idempotent by request id).
        """
        ...

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        """A lease on the key's budgets for the completion's model, sized after it; None: none now."""
        ...

    async def return_leases(self, uses: Sequence[LeaseUse]) -> None:
        """Give back what was not used of these leases."""
        ...

    async def recover_leases(self, recovered: Sequence[RecoveredLease]) -> int:
        """Close what a dead process of this edge held (its journal); the number of rows opened."""
        ...
