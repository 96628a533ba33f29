"""API key secrets: generation, hashing and display prefixes (shared by edge, control and clients).

A secret is ``sk-co-`` followed by 43 URL-safe characters (256 random bits).
Only ``hash_secret(secret)`` (SHA-256, hex) and ``display_prefix(secret)`` are
stored. A fast hash is right here: the secret carries 256 bits of entropy, so
there is nothing to brute-force, and the edge can hash on every request.

Example::

    secret = new_secret()
    assert looks_like_secret(secret)
    row_hash = hash_secret(secret)
"""

from __future__ import annotations

import hashlib
import re
import secrets

SECRET_PREFIX = "sk-co-"
_RANDOM_BYTES = 32  # 256 bits
_SECRET_RE = re.compile(r"^sk-co-[A-Za-z0-9_-]{43,}$")
_DISPLAY_CHARS = 4


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def looks_like_secret(value: str) -> bool:
    return bool(_SECRET_RE.match(value))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_secret_bytes(secret: str) -> bytes:
    """The raw 32-byte digest (what the edge sends over the gateway service)."""
    return hashlib.sha256(secret.encode()).digest()


def display_prefix(secret: str) -> str:
    """``sk-co-`` plus the first four random characters, e.g. ``sk-co-Ab3x``."""
    return secret[: len(SECRET_PREFIX) + _DISPLAY_CHARS]
