"""Settings of ``claudeopus admin``: how it reaches control, and the secrets it may take from the environment.

Read once, when ``claudeopus admin`` starts; each command's ``--control`` and ``--key`` (and
``--insecure`` before the command) win over the variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from claudeopus import tls
from claudeopus.settings import CONTROL_CLIENT_TLS, flag, layered

DEFAULT_CONTROL = "127.0.0.1:50051"
# The settings a command-line flag may override, and the variable each replaces.
OVERRIDABLE = {
    "control": "CLAUDEOPUS_CONTROL",
    "key": "CLAUDEOPUS_ADMIN_KEY",
    "insecure": "CLAUDEOPUS_CONTROL_INSECURE",
}


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """Where control is, the credential, TLS to control; and passwords or a token given by the environment.

    Example::

        settings = AdminSettings.from_env(insecure=None)  # CLAUDEOPUS_CONTROL, CLAUDEOPUS_ADMIN_KEY, ...
        settings = settings.with_overrides(control="control.internal:50051", key=None)
        settings.check_tls()
    """

    control: str = DEFAULT_CONTROL
    # A management key (sk-co-...) or a session token from ``admin login``.
    key: str = field(default="", repr=False)
    # TLS to control: the CA that signed its certificate, and a client pair for mutual TLS.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Allow plain-text gRPC to a control plane on another host.
    insecure: bool = False
    # Answers the commands would otherwise ask for (login, set-password) and the bootstrap token.
    password: str = field(default="", repr=False)
    current_password: str = field(default="", repr=False)
    bootstrap_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, insecure: bool | None = None) -> AdminSettings:
        """Read ``CLAUDEOPUS_*`` variables once; ``insecure`` is ``admin --insecure`` (None: not given)."""
        env, given = layered(environ, {"insecure": insecure}, OVERRIDABLE)
        return cls(
            control=env.get("CLAUDEOPUS_CONTROL", "") or DEFAULT_CONTROL,
            key=env.get("CLAUDEOPUS_ADMIN_KEY", ""),
            tls_ca=env.get(CONTROL_CLIENT_TLS[0], ""),
            tls_cert=env.get(CONTROL_CLIENT_TLS[1], ""),
            tls_key=env.get(CONTROL_CLIENT_TLS[2], ""),
            insecure=given.get("insecure", False) or flag(env, "CLAUDEOPUS_CONTROL_INSECURE"),
            password=env.get("CLAUDEOPUS_PASSWORD", ""),
            current_password=env.get("CLAUDEOPUS_CURRENT_PASSWORD", ""),
            bootstrap_token=env.get("CLAUDEOPUS_BOOTSTRAP_TOKEN", ""),
        )

    def with_overrides(self, *, control: str | None, key: str | None) -> AdminSettings:
        """These settings with a command's ``--control`` and ``--key`` on top (None: not given)."""
        return dataclasses.replace(
            self, control=self.control if control is None else control, key=self.key if key is None else key
        )

    def check_tls(self) -> None:
        """The TLS files are usable (TLSConfigError naming the variable otherwise); checked before connecting."""
        tls.check_client(self.tls_ca, self.tls_cert, self.tls_key, names=CONTROL_CLIENT_TLS)
