"""Files and directories only the edge's own user may read: 0600 and 0700, whatever the umask.

The access log, the usage spool and the lease journal hold client addresses and usage
metadata; they are created private, and the umask can neither open nor narrow that
(a mode given to ``os.open`` or ``mkdir`` is filtered through the umask, so it is set
again explicitly). What already exists keeps the mode its operator gave it.

Example::

    private_directory(Path("spool"))
    fd = open_private(Path("spool") / "LOCK", os.O_RDWR)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIRECTORY_MODE", "FILE_MODE", "open_private", "private_directory"]

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory; each level created here is 0700."""
    folder = Path(path)
    missing: list[Path] = []
    level = folder.absolute()
    while not level.exists() and level != level.parent:
        missing.append(level)
        level = level.parent
    folder.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    for created in reversed(missing):
        os.chmod(created, DIRECTORY_MODE)
    return folder


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """Open ``path`` with ``flags`` (O_EXCL: it must be new), creating it 0600; a file descriptor."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        if flags & os.O_EXCL:
            raise
        return os.open(path, flags & ~os.O_CREAT)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
