"""Dashboard passwords: argon2id hashes (argon2-cffi's defaults), computed off the event loop.

Hashing and verifying cost tens of milliseconds of CPU each, so both run in a
worker thread. A password or a hash never appears in an error message or a log line.

Example::

    stored = await hash_password("correct horse battery staple")
    assert await verify(stored, "correct horse battery staple")
    assert not await verify(None, "anything")  # costs as much as a real check
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from claudeopus.control.domain.errors import InvalidArgument

MIN_LENGTH = 12
MAX_LENGTH = 1024

_hasher = PasswordHasher()

# A hash of a random, forgotten password made with the library's default
# parameters. Checking a login for an unknown email against it costs as much as
# checking a real one, so the answer's timing does not tell which emails exist.
# A test keeps it in step with the defaults (``needs_rehash`` must be false).
DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$U71Y5Wgz7c3fVnhkdzLYQw$c38+Qj5zvlUubqm0U2nxxLJWxNaGc+sGPFo3PqdnM4M"


def validate(field: str, password: str) -> str:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidArgument.field(field, f"must be {MIN_LENGTH} to {MAX_LENGTH} characters")
    return password


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; with no stored hash, spend the same time and say no."""
    if stored is None:
        await asyncio.to_thread(_verify, DUMMY_HASH, password)
        return False
    return await asyncio.to_thread(_verify, stored, password)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than the current defaults."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


__all__ = ["DUMMY_HASH", "MAX_LENGTH", "MIN_LENGTH", "hash_password", "needs_rehash", "validate", "verify"]
