"""Reading the auth epoch: the counter database triggers bump with every change Authorize reads.

See :class:`~claudeopus.control.models.AuthEpoch` for what bumps it and
:mod:`~claudeopus.control.domain.auth_cache` for what it is for.

Example::

    epoch = await current_epoch()          # as committed now
    epoch = await current_epoch(conn)      # as that transaction's next statement sees it
"""

from __future__ import annotations

from tortoise.backends.base.client import BaseDBAsyncClient

from claudeopus.control.models import AuthEpoch


async def current_epoch(conn: BaseDBAsyncClient | None = None) -> int:
    """The auth epoch as committed now (on ``conn``: as that transaction's next statement sees it)."""
    db = conn if conn is not None else AuthEpoch._meta.db
    rows = await db.execute_query_dict("SELECT value FROM auth_epoch WHERE id = 1")
    return int(rows[0]["value"]) if rows else -1
