"""Files that hold secrets or account data, created owner-only whatever the umask.

Used for the bootstrap token, ``claudeopus serve``'s first-start secrets, the
SQLite database, and the edge's access log, usage spool and lease journal (shared by
control, the edge and the CLI, like :mod:`claudeopus.tls`).

Example::

    write_private(Path("secrets.txt"), "admin key: sk-co-...\\n")   # 0600, atomically
    create_private(Path("claudeopus.db"))                           # 0600, contents untouched
    private_directory(Path("spool"))                                # 0700 where it is made
    fd = open_private(Path("spool") / "LOCK", os.O_RDWR)            # 0600 if made now
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def _parent(file: Path) -> None:
    private_directory(file.parent)


def private_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory: missing levels are created owner-only (0700, whatever the umask);
    existing ones are left as they are."""
    missing = []
    directory = Path(path).absolute()
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to set
        directory.chmod(DIRECTORY_MODE)
    return Path(path)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """Open ``path`` with ``flags`` (with O_EXCL it must be new); made now, it is 0600 whatever the umask.

    An existing file keeps its mode (it may be a device such as /dev/stdout, or its operator's choice).
    """
    try:
        descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        if flags & os.O_EXCL:
            raise
        return os.open(path, flags & ~os.O_CREAT)
    try:
        os.fchmod(descriptor, FILE_MODE)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def write_private(file: Path, text: str) -> None:
    """Write ``text`` to ``file`` readable and writable by its owner only (0600), replacing it atomically."""
    _parent(file)
    temporary = file.with_name(f".{file.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(descriptor, "w") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # the umask can only have narrowed it; say it exactly
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_private(file: Path) -> None:
    """Make sure ``file`` exists and is owner-only (0600); an existing file keeps its contents."""
    _parent(file)
    descriptor = os.open(file, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)


__all__ = ["create_private", "open_private", "private_directory", "write_private"]
