"""What control's gateway service takes in one call: control refuses more, the edge batches to fit.

Shared by both sides so that the numbers are written once.

Example::

    for start in range(0, len(settles), MAX_SETTLES_PER_CALL):
        await control.settle_batch(settles[start : start + MAX_SETTLES_PER_CALL])
"""

from __future__ import annotations

__all__ = ["MAX_LEASES_PER_CALL", "MAX_LOST_REQUESTS_PER_CALL", "MAX_SETTLES_PER_CALL"]

MAX_SETTLES_PER_CALL = 1000  # BatchSettle
MAX_LEASES_PER_CALL = 1000  # RecoverLeases and ReturnLeases
MAX_LOST_REQUESTS_PER_CALL = 10_000  # RecoverLeases, over all its leases
