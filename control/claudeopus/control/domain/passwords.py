"""Dashboard passwords: argon2id hashes (argon2-cffi's defaults), computed off the event loop.

Hashing and verifying cost tens of milliseconds of CPU each (on up to four cores: the
hash's parallelism), so both run in the :class:`PasswordPool`'s own few threads
(``CLAUDEOPUS_PASSWORD_WORKERS``), never in the default executor that the rest of control
uses, and on Linux at the lowest CPU priority (nice 19, per thread; argon2's own threads
inherit it): a flood of logins queues there and gets only the CPU that Authorize and the
edges leave idle. A password or a hash never appears in an error message or a log line.

Example::

    with PasswordPool(workers=1) as pool:
        stored = await pool.hash("correct horse battery staple")
        assert await pool.verify(stored, "correct horse battery staple")
        assert not await pool.verify(None, "anything")  # costs as much as a real check
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

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


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


LOWEST_PRIORITY = 19


def _lowest_priority() -> None:
    """Run the calling worker thread, and the threads it starts, at the lowest CPU priority (Linux only)."""
    if sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS would lower the whole process
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


class PasswordPool:
    """The bounded thread pool where every argon2 hash and verification runs; owned by the server."""

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="claudeopus-argon2", initializer=_lowest_priority
        )

    def __enter__(self) -> PasswordPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads; hashes still queued are cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; with no stored hash, spend the same time and say no."""
        loop = asyncio.get_running_loop()
        # Looked up at call time (not bound at import), so a test can watch which hash is checked.
        matched = await loop.run_in_executor(self._executor, _verify, stored or DUMMY_HASH, password)
        return matched and stored is not None


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than the current defaults."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


__all__ = ["DUMMY_HASH", "MAX_LENGTH", "MIN_LENGTH", "PasswordPool", "needs_rehash", "validate"]
