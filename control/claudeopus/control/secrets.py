"""Upstream credentials at rest: sealed with AES-256-GCM under the operator's secrets keys.

``CLAUDEOPUS_SECRETS_KEY`` holds one or more keys separated by commas, each 32 random bytes in
URL-safe base64 (:func:`generate_key` makes one). The first key seals; every key opens, so a key
is rotated by putting a new one first and keeping the old ones after it until every sealed value
was sealed again (:meth:`SecretBox.reseal`).

A sealed value is bound to what it belongs to (``context``, e.g. the upstream's resource name):
a sealed credential copied onto another row does not open there. Its layout is::

    version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext and GCM tag

The key id is the start of the key's SHA-256, so the right key is tried first and a value sealed
under a key no longer configured is refused with a clear error. Nothing here logs, and no error
text quotes a key or a credential.

Example::

    box = SecretBox(parse_keys(settings_value))
    sealed = box.seal("sk-upstream-...", context="upstreams/anthropic")
    box.open(sealed, context="upstreams/anthropic")  # "sk-upstream-..."
    fingerprint("sk-upstream-...")  # "sha256:3f0c...", shown with last_four() instead of the value
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from claudeopus.settings import SettingsError

__all__ = [
    "SECRETS_KEY_VARIABLE",
    "SecretBox",
    "SecretsError",
    "fingerprint",
    "generate_key",
    "last_four",
    "parse_keys",
]

SECRETS_KEY_VARIABLE = "CLAUDEOPUS_SECRETS_KEY"
KEY_BYTES = 32
_VERSION = b"\x01"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_HEADER_BYTES = len(_VERSION) + _KEY_ID_BYTES + _NONCE_BYTES
_FINGERPRINT_HEX = 16


class SecretsError(Exception):
    """A sealed value cannot be opened: no key for it, or it was altered or moved. Names neither."""


def generate_key() -> str:
    """A new secrets key, as ``CLAUDEOPUS_SECRETS_KEY`` takes it."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_keys(value: str) -> tuple[bytes, ...]:
    """The keys of a ``CLAUDEOPUS_SECRETS_KEY`` value, current first; empty for an empty value."""
    keys: list[bytes] = []
    for position, text in enumerate(value.split(","), start=1):
        text = text.strip()
        if not text and not value.strip():
            return ()
        try:
            key = base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise SettingsError(
                f"{SECRETS_KEY_VARIABLE}: key {position} is not {KEY_BYTES} bytes in URL-safe base64; make one with "
                "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
            )
        keys.append(key)
    if len(set(keys)) != len(keys):
        raise SettingsError(f"{SECRETS_KEY_VARIABLE}: the same key is listed twice")
    return tuple(keys)


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KEY_ID_BYTES]


class SecretBox:
    """Seal and open credentials with the configured keys (the first one seals)."""

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._keys = {_key_id(key): AESGCM(key) for key in keys}
        self._current = _key_id(keys[0])

    def seal(self, plaintext: str, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return _VERSION + self._current + nonce + sealed

    def open(self, sealed: bytes, *, context: str) -> str:
        if len(sealed) <= _HEADER_BYTES or sealed[:1] != _VERSION:
            raise SecretsError("the sealed credential is malformed")
        aead = self._keys.get(sealed[1 : 1 + _KEY_ID_BYTES])
        if aead is None:
            raise SecretsError(f"the credential was sealed with a key {SECRETS_KEY_VARIABLE} no longer lists")
        nonce = sealed[1 + _KEY_ID_BYTES : _HEADER_BYTES]
        try:
            return aead.decrypt(nonce, sealed[_HEADER_BYTES:], context.encode("utf-8")).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretsError("the sealed credential was altered or belongs to another resource") from None

    def is_current(self, sealed: bytes) -> bool:
        """Sealed with the first key: nothing to do when rotating."""
        return sealed[1 : 1 + _KEY_ID_BYTES] == self._current

    def reseal(self, sealed: bytes, *, context: str) -> bytes:
        """The same credential sealed with the current key (as it is when already so)."""
        if self.is_current(sealed):
            return sealed
        return self.seal(self.open(sealed, context=context), context=context)


def fingerprint(credential: str) -> str:
    """What Get and List show of a credential, with :func:`last_four`: enough to tell two apart."""
    return "sha256:" + hashlib.sha256(credential.encode("utf-8")).hexdigest()[:_FINGERPRINT_HEX]


def last_four(credential: str) -> str:
    """The last four characters, or nothing of a credential too short to show any of it safely."""
    return credential[-4:] if len(credential) >= 16 else ""
