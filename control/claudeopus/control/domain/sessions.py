"""Dashboard sessions: short-lived bearer tokens from Login, stored only as SHA-256.

A token is ``co-session-`` followed by 43 URL-safe characters (256 random bits).

Example::

    token, session = await open_session(account, now)
    assert (await live_session(token, now)).id == session.id
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from claudeopus.control.domain.errors import Reason, Unauthenticated
from claudeopus.control.models import Account, Session

TOKEN_PREFIX = "co-session-"
SESSION_TTL = timedelta(hours=12)
_TOKEN_RE = re.compile(r"^co-session-[A-Za-z0-9_-]{43}$")


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(account: Account, now: datetime) -> tuple[str, Session]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session = await Session.create(
        token_hash=_hash(token), account=account, created_at=now, expires_at=now + SESSION_TTL
    )
    return token, session


async def live_session(token: str, now: datetime) -> Session:
    """The unexpired session of ``token`` with its account loaded, or SESSION_INVALID."""
    invalid = Unauthenticated(Reason.SESSION_INVALID, "The session token is unknown or has expired; log in again.")
    if not _TOKEN_RE.match(token):
        raise invalid
    session = await Session.get_or_none(token_hash=_hash(token)).select_related("account")
    if session is None or session.expires_at <= now or session.account.deleted_at is not None:
        raise invalid
    return session
