"""Rotating an API key: a new secret, the old one working for a grace period.

Rotation changes only the secret: limits and setters stay as they are. A revoked key
cannot be rotated (``KEY_NOT_LIVE``).

Example::

    issued = await rotate_api_key(principal, 12, grace=grace_period(3600, 0), now=now)
    print(issued.secret)   # shown this once; the old secret works for another hour
"""

from __future__ import annotations

from datetime import datetime, timedelta

from claudeopus import keys
from claudeopus.control.domain.api_keys import IssuedKey, key_in_subtree, minted, not_live
from claudeopus.control.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from claudeopus.control.domain.lease_fence import LONGEST_WAIT, outlive_leases
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import ApiKey

MAX_GRACE_PERIOD = timedelta(days=30)


def grace_period(seconds: int, nanos: int) -> timedelta:
    """A protobuf Duration's fields as a grace period, or InvalidArgument on ``grace_period``."""
    same_sign = not (seconds > 0 and nanos < 0) and not (seconds < 0 and nanos > 0)
    if not -999_999_999 <= nanos <= 999_999_999 or not same_sign:
        raise InvalidArgument.field("grace_period", "is not a valid duration")
    if seconds < 0 or nanos < 0 or seconds > MAX_GRACE_PERIOD.days * 86_400:
        raise _grace_out_of_range()
    grace = timedelta(seconds=seconds, microseconds=nanos // 1000)
    _check_grace(grace)
    return grace


def _grace_out_of_range() -> InvalidArgument:
    return InvalidArgument.field("grace_period", f"must be between 0 and {MAX_GRACE_PERIOD.days} days")


def _check_grace(grace: timedelta) -> None:
    if grace < timedelta(0) or grace > MAX_GRACE_PERIOD:
        raise _grace_out_of_range()


async def rotate_api_key(principal: Principal, key_id: int, *, grace: timedelta, now: datetime) -> IssuedKey:
    """Give a live key of the caller's subtree a new secret; the old one works until ``now + grace``.

    The key keeps its id, settings and usage. After the grace period (at once
    when ``grace`` is zero) the old secret is refused as ``KEY_ROTATED``. Only one earlier secret
    is kept: rotating again while a previous rotation's grace period is running
    replaces that older secret (it stops working at once) with the one being
    rotated away now.

    The swap is one conditional UPDATE on the secret the caller saw, so of two
    concurrent rotations exactly one wins; the other fails with
    FAILED_PRECONDITION ``KEY_ROTATED`` and its secret is never issued.
    """
    _check_grace(grace)
    key = await key_in_subtree(principal, key_id)
    if key.revoked_at is not None:
        raise not_live()
    secret = keys.new_secret()
    swapped = await ApiKey.filter(id=key.id, key_hash=key.key_hash, revoked_at__isnull=True).update(
        key_hash=keys.hash_secret(secret),
        prefix=keys.display_prefix(secret),
        previous_key_hash=key.key_hash,
        previous_expires_at=now + grace,
        rotated_at=now,
        **minted(principal, key.scopes),
    )
    if not swapped:
        latest = await ApiKey.get_or_none(id=key.id)
        if latest is None:
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: API key not found.")
        if latest.revoked_at is not None:
            raise not_live()
        raise FailedPrecondition(
            Reason.KEY_ROTATED, "name: the API key was rotated by another call at the same time; read it and retry."
        )
    await key.refresh_from_db()
    if grace < LONGEST_WAIT:  # a lease of the old secret may outlive its grace: let it end first
        await outlive_leases(api_key_id=key.id, now=now)
    return IssuedKey(key=key, secret=secret)
