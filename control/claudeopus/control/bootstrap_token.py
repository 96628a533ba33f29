"""The one-time token a fresh control plane demands for BootstrapAdmin, kept in a 0600 file.

A control process that starts with no admin makes a random token and writes it to
``CLAUDEOPUS_BOOTSTRAP_TOKEN_FILE`` (``./claudeopus-bootstrap.token`` by default), readable
only by its owner whatever the umask. BootstrapAdmin is then accepted only with that token,
so another local process cannot race the operator for the root key. The token is never
logged: the log names the file. Replicas started from the same directory share one file:
a valid one already there (a regular file, owner-only) is reused rather than replaced.
Once the admin exists the file is removed; a server that starts with an admin writes none.
With no file configured (an embedding program, such as ``claudeopus serve``, that
bootstraps in-process) the token lives only in memory.

Example::

    gate = BootstrapGate.open("claudeopus-bootstrap.token")
    gate.check(request.bootstrap_token)  # PermissionDenied BOOTSTRAP_TOKEN_INVALID on a mismatch
    gate.consume()                       # after the bootstrap: the file is gone
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from claudeopus.control.domain.errors import PermissionDenied, Reason
from claudeopus.private_files import write_private

TOKEN_PREFIX = "co-bootstrap-"
_TOKEN_RE = re.compile(r"^co-bootstrap-[A-Za-z0-9_-]{43}$")
_log = logging.getLogger(__name__)


class BootstrapGate:
    """Whether a BootstrapAdmin call may proceed; ``token`` None means an admin existed at start."""

    def __init__(self, token: str | None, path: Path | None = None) -> None:
        self._token = token
        self._path = path

    @classmethod
    def closed(cls, path: str = "") -> BootstrapGate:
        """For a server that started with an admin: BootstrapAdmin answers ADMIN_EXISTS; a stale file goes."""
        if path:
            Path(path).unlink(missing_ok=True)
        return cls(None)

    @classmethod
    def open(cls, path: str) -> BootstrapGate:
        """A gate with a fresh (or the replicas' shared) token; written to ``path`` unless it is empty."""
        if not path:
            return cls(TOKEN_PREFIX + secrets.token_urlsafe(32))
        file = Path(path).absolute()
        token = _read_private(file)
        if token is None:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            write_private(file, token + "\n")
        _log.info(
            "no admin yet: the one-time bootstrap token is in %s (mode 0600); run "
            "`claudeopus admin bootstrap --email ... --token-file %s` on this machine",
            file,
            file,
        )
        return cls(token, file)

    @property
    def token(self) -> str | None:
        """The token (for an embedding program and in-process tests); None once consumed or never needed."""
        return self._token

    def check(self, presented: str) -> None:
        """Refuse a BootstrapAdmin whose token does not match (nothing to check once an admin exists)."""
        if self._token is None:
            return  # the domain answers ADMIN_EXISTS
        if not hmac.compare_digest(presented.strip().encode(), self._token.encode()):
            raise PermissionDenied(
                Reason.BOOTSTRAP_TOKEN_INVALID,
                "bootstrap_token: pass the one-time token from the file the control plane named at start "
                "(claudeopus admin bootstrap --token-file PATH).",
            )

    def consume(self) -> None:
        """The admin exists: forget the token and remove its file."""
        self._token = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def _read_private(file: Path) -> str | None:
    """The token in ``file`` if it is a regular, owner-only file of ours holding a valid token."""
    try:
        info = file.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
            return None
        text = file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _TOKEN_RE.match(text) else None


__all__ = ["BootstrapGate"]
