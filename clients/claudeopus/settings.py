"""What every settings module shares: the one error for a bad setting, and how the environment is read.

Each process reads its environment once, into the frozen settings object of its kind:
``claudeopus.edge.settings.EdgeSettings``, ``claudeopus.control.settings.ControlSettings``,
``claudeopus.cli.settings.ServeSettings`` (both in one process) and
``claudeopus.cli.admin.settings.AdminSettings`` (how ``claudeopus admin`` reaches control).
Command-line flags are handed to ``from_env`` as overrides and win over the variables they
replace, which are then not read at all (a flag may stand in for a malformed variable). Nothing
else reads ``os.environ``.

Example::

    env, given = layered(None, {"http_address": "0.0.0.0:8080", "tls_cert": None}, {"http_address": "CLAUDEOPUS_HTTP"})
    # env: the process environment without CLAUDEOPUS_HTTP; given: {"http_address": "0.0.0.0:8080"}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# CLAUDEOPUS_LOG_LEVEL unset: ClaudeOpus's own loggers at info (the server commands' --log-level).
DEFAULT_LOG_LEVEL = "info"
# TLS from a client to control: the edge and ``claudeopus admin`` read the same three variables.
CONTROL_CLIENT_TLS = ("CLAUDEOPUS_CONTROL_CA", "CLAUDEOPUS_CONTROL_CLIENT_CERT", "CLAUDEOPUS_CONTROL_CLIENT_KEY")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def layered(
    environ: Mapping[str, str] | None, overrides: Mapping[str, object], variables: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment (this process's when ``environ`` is None) and the overrides given (not None).

    ``variables`` names the variable each overridable field is read from; a variable whose field
    is overridden is left out of the environment returned, so it is never parsed.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    replaced = {variables[name] for name in given}
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if name not in replaced}, given


def flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``, ``no``, ``off`` (unset: no)."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")
