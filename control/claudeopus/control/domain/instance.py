"""Installation-wide values stored once in the database and shared by every replica."""

from __future__ import annotations

import secrets

from tortoise.exceptions import IntegrityError

from claudeopus.control.models import InstanceValue

PAGE_TOKEN_KEY = "page-token-key"
ADMIN_BOOTSTRAPPED = "admin-bootstrapped"


async def load_or_create_secret(name: str, size: int = 32) -> bytes:
    """A random secret under ``name``, created by whichever replica asks first."""
    row = await InstanceValue.get_or_none(name=name)
    if row is None:
        try:
            row = await InstanceValue.create(name=name, value=secrets.token_bytes(size))
        except IntegrityError:
            row = await InstanceValue.get(name=name)
    return bytes(row.value)
