"""``claudeopus serve``'s secrets key: CLAUDEOPUS_SECRETS_KEY when set, else one kept in a file.

A laptop install should be able to add an upstream with a credential without first learning
about secrets keys, so serve makes a key on first start into ``claudeopus-secrets.key`` (0600,
beside the embedded database) and reads it on every later start. Whoever has that file and the
database has the credentials: back them up apart, or set CLAUDEOPUS_SECRETS_KEY and delete it.

Example::

    control = with_secrets_key(settings.control, Path.cwd())
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from claudeopus.control.secrets import SECRETS_KEY_VARIABLE, generate_key, parse_keys
from claudeopus.control.settings import ControlSettings
from claudeopus.private_files import write_private
from claudeopus.settings import SettingsError

SECRETS_KEY_FILE = "claudeopus-secrets.key"
_log = logging.getLogger("claudeopus")


def with_secrets_key(control: ControlSettings, directory: Path) -> ControlSettings:
    """``control`` with CLAUDEOPUS_SECRETS_KEY's keys, or with the key of ``directory``'s key file
    (made now, 0600, when there is none)."""
    if control.secrets_keys:
        return control
    path = directory / SECRETS_KEY_FILE
    if path.exists():
        text = path.read_text(encoding="ascii", errors="replace").strip()
    else:
        text = generate_key()
        write_private(path, text + "\n")
        _log.info("made a secrets key for upstream credentials in %s (keep it with the database)", path.absolute())
    try:
        keys = parse_keys(text)
    except SettingsError:
        raise SettingsError(f"{path} does not hold a secrets key; restore it, or set {SECRETS_KEY_VARIABLE}") from None
    if not keys:
        raise SettingsError(f"{path} is empty; restore it, or set {SECRETS_KEY_VARIABLE}")
    return dataclasses.replace(control, secrets_keys=keys)
