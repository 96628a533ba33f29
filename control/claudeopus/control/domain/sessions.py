"""Dashboard sessions: short-lived bearer tokens from Login, stored only as SHA-256.

A token is ``co-session-`` followed by 43 URL-safe characters (256 random bits). A session
lives ``CLAUDEOPUS_SESSION_TTL`` (12 hours by default). Ending an account's sessions (a
password reset, a suspension) also revokes the management keys minted through them
(``ApiKey.minted_by_session``: keys made, rotated or given the management scope through the
session or through such keys), so a stolen session leaves no management credential behind;
inference keys made through it stay (revoke them by hand if the session was stolen).

Example::

    token, session = await open_session(account, now, timedelta(hours=12))
    assert (await live_session(token, now)).id == session.id
    await end_sessions(Session.filter(account_id=account.id), now)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from tortoise.queryset import QuerySet

from claudeopus.control.domain.errors import Reason, Unauthenticated
from claudeopus.control.domain.lease_fence import outlive_leases
from claudeopus.control.models import Account, ApiKey, Scope, Session

TOKEN_PREFIX = "co-session-"
_TOKEN_RE = re.compile(r"^co-session-[A-Za-z0-9_-]{43}$")


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(account: Account, now: datetime, ttl: timedelta) -> tuple[str, Session]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session = await Session.create(token_hash=_hash(token), account=account, created_at=now, expires_at=now + ttl)
    return token, session


async def end_sessions(query: QuerySet[Session], now: datetime) -> list[int]:
    """Delete the sessions ``query`` selects and revoke the live management keys minted through them.

    Run it inside the transaction that made the change (a reset password, a suspension), so
    both hold when the change commits. Returns the ids of the keys it revoked: the caller waits
    for their leases with :func:`outlive_keys` once the transaction committed.
    """
    ids = await query.values_list("id", flat=True)
    if not ids:
        return []
    minted = ApiKey.filter(minted_by_session__in=list(ids), revoked_at__isnull=True)
    key_ids = [key_id for key_id, scopes in await minted.values_list("id", "scopes") if scopes & Scope.MANAGEMENT]
    if key_ids:
        await ApiKey.filter(id__in=key_ids, revoked_at__isnull=True).update(revoked_at=now)
    await Session.filter(id__in=list(ids)).delete()
    return key_ids


async def outlive_keys(key_ids: list[int], now: datetime) -> None:
    """Wait until no edge admits from a lease for the revoked keys (keys with the inference scope too)."""
    if key_ids:
        await outlive_leases(api_key_ids=key_ids, now=now)


async def live_session(token: str, now: datetime) -> Session:
    """The unexpired session of ``token`` with its account loaded, or SESSION_INVALID."""
    invalid = Unauthenticated(Reason.SESSION_INVALID, "The session token is unknown or has expired; log in again.")
    if not _TOKEN_RE.match(token):
        raise invalid
    session = await Session.get_or_none(token_hash=_hash(token)).select_related("account")
    if session is None or session.expires_at <= now or session.account.deleted_at is not None:
        raise invalid
    return session
