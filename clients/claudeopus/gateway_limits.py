"""The limits of control's gateway service, written once for both sides.

Control refuses a call or a request beyond them; the edge batches and checks its requests to
fit, so a request the edge admits is one control can take.

Example::

    for start in range(0, len(settles), MAX_SETTLES_PER_CALL):
        await control.settle_batch(settles[start : start + MAX_SETTLES_PER_CALL])
"""

from __future__ import annotations

__all__ = [
    "MAX_AUTHORIZES_PER_CALL",
    "MAX_CHOICES",
    "MAX_LEASES_PER_CALL",
    "MAX_LOST_REQUESTS_PER_CALL",
    "MAX_OUTPUT_TOKENS",
    "MAX_SETTLES_PER_CALL",
]

MAX_AUTHORIZES_PER_CALL = 1000  # BatchAuthorize
MAX_SETTLES_PER_CALL = 1000  # BatchSettle
MAX_LEASES_PER_CALL = 1000  # RecoverLeases and ReturnLeases
MAX_LOST_REQUESTS_PER_CALL = 10_000  # RecoverLeases, over all its leases
MAX_OUTPUT_TOKENS = 100_000_000  # the largest output cap a request or a setting may name
MAX_CHOICES = 128  # the most choices (n, best_of) one request may reserve output for
