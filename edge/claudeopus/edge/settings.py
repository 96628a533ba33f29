"""Settings of the edge, read once into a typed, immutable object."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from claudeopus import tls
from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, MAX_CHOICES
from claudeopus.settings import CONTROL_CLIENT_TLS, DEFAULT_LOG_LEVEL, SettingsError, flag, layered

DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
DEFAULT_CONTROL = "127.0.0.1:50051"
DEFAULT_SPOOL_DIR = "spool"
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024
# The size at which an access log file is rotated out early (besides its window).
DEFAULT_ACCESS_LOG_MAX_BYTES = 64 * 1024 * 1024
MIN_ACCESS_LOG_MAX_BYTES = 4096
# What /v1/models names as the owner of every model it lists.
DEFAULT_MODELS_OWNED_BY = "claudeopus"
MAX_CONNECT_RETRIES = 100
# Settles wait this long for others to join their batch (see settler.py); at most MAX_SETTLE_LINGER.
DEFAULT_SETTLE_LINGER = 0.01
MAX_SETTLE_LINGER = 1.0
# Budget leases (see leases.py): how long each lease is admitted from, in seconds; 0 turns them off.
DEFAULT_LEASE_SECONDS = 1.0
MIN_LEASE_SECONDS = 0.05
MAX_LEASE_SECONDS = 60.0
TLS_SETTINGS = ("CLAUDEOPUS_TLS_CERT", "CLAUDEOPUS_TLS_KEY")
# The settings a command-line flag may override, and the variable each replaces.
OVERRIDABLE = {
    "upstream_url": "CLAUDEOPUS_UPSTREAM_URL",
    "service_token": "CLAUDEOPUS_SERVICE_TOKEN",
    "http_address": "CLAUDEOPUS_HTTP",
    "control_target": "CLAUDEOPUS_CONTROL",
    "access_log_stdout": "CLAUDEOPUS_ACCESS_LOG_STDOUT",
    "tls_cert": TLS_SETTINGS[0],
    "tls_key": TLS_SETTINGS[1],
    "log_level": "CLAUDEOPUS_LOG_LEVEL",
}


class EdgeOverrides(TypedDict, total=False):
    """Command-line values for :meth:`EdgeSettings.from_env`; None means the flag was not given."""

    upstream_url: str | None
    service_token: str | None
    http_address: str | None
    control_target: str | None
    access_log_stdout: bool | None
    tls_cert: str | None
    tls_key: str | None
    log_level: str | None


def split_address(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """Everything the edge needs to start.

    Example::

        settings = EdgeSettings(upstream_url="http://127.0.0.1:9000/v1", service_token="...")
        app = build_app(settings)
    """

    upstream_url: str
    service_token: str = field(repr=False)
    upstream_api_key: str = field(default="", repr=False)
    http_address: str = DEFAULT_HTTP_ADDRESS
    control_target: str = DEFAULT_CONTROL
    # Upstream timeouts (seconds): connecting, and the longest silence while reading.
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    # The longest a whole upstream exchange may take (connect, headers, every chunk of a stream),
    # however busy the upstream keeps it; keep it below control's reservation timeout (900 s).
    upstream_max_duration: float = 600.0
    # Extra attempts after a connection that failed before a byte of the request was sent
    # (refused, unreachable); never after: a POST that may have reached the upstream is not repeated.
    upstream_connect_retries: int = 1
    upstream_max_connections: int = 512
    # How long authorize may take before the edge fails closed with 503.
    control_timeout: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    # The request field that carries a budget's default output cap to the upstream, when the
    # client named none: max_completion_tokens (OpenAI) or max_tokens (older compatible servers).
    upstream_max_tokens_field: str = "max_completion_tokens"
    # The most choices (n, best_of) one request may ask for; each reserves the output cap.
    max_choices: int = DEFAULT_MAX_CHOICES
    # The owned_by of every model /v1/models lists (never the upstream's own).
    models_owned_by: str = DEFAULT_MODELS_OWNED_BY
    # The durable spool of settles that could not reach control (see spool.py): its directory
    # (relative paths are taken from the edge's working directory; one edge per directory) and
    # the size at which new completions are refused with 503 until replay has made room.
    spool_dir: str = DEFAULT_SPOOL_DIR
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    # How long the settler waits for more settles to join a batch (seconds; 0: send at once).
    settle_linger: float = DEFAULT_SETTLE_LINGER
    # Budget leases (on by default): how long the edge admits a key's requests from one lease
    # before it gives it back, which also bounds how long a revocation, suspension, budget or
    # price change waits for leases to end; 0 = off (every request authorized with control).
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Access log (see access_log.py): a file rotated every access_log_rotate_seconds at aligned UTC
    # boundaries or once it reaches access_log_max_bytes, keeping access_log_keep rotated files
    # besides the current one; None = no file.
    # Built here None; from the environment, logs/access.log unless CLAUDEOPUS_ACCESS_LOG=off.
    access_log_path: str | None = None
    access_log_rotate_seconds: int = 3600
    access_log_keep: int = 24
    access_log_max_bytes: int = DEFAULT_ACCESS_LOG_MAX_BYTES
    access_log_stdout: bool = False
    # HTTPS on the edge's port with this certificate and key (PEM files); plain HTTP when unset.
    tls_cert: str = ""
    tls_key: str = ""
    # gRPC to control over TLS when any is set: the CA bundle that signed control's certificate, and
    # the edge's client certificate and key for a control plane that requires one (mutual TLS).
    control_ca: str = ""
    control_client_cert: str = ""
    control_client_key: str = ""
    # The CA bundle an https:// upstream is verified against (the standard SSL_CERT_FILE);
    # empty: certifi's bundle.
    upstream_ca_file: str = ""
    # debug, info or warning: ClaudeOpus's own loggers (libraries never log below info).
    log_level: str = DEFAULT_LOG_LEVEL

    def __post_init__(self) -> None:
        if self.upstream_max_tokens_field not in ("max_completion_tokens", "max_tokens"):
            raise SettingsError("CLAUDEOPUS_UPSTREAM_MAX_TOKENS_FIELD must be max_completion_tokens or max_tokens")
        if not (0 < len(self.models_owned_by) <= 64 and self.models_owned_by.isprintable()):
            raise SettingsError("CLAUDEOPUS_MODELS_OWNED_BY must be 1 to 64 printable characters")
        if not 1 <= self.max_choices <= MAX_CHOICES:
            raise SettingsError(f"CLAUDEOPUS_MAX_CHOICES must be a whole number from 1 to {MAX_CHOICES}")
        if not self.upstream_url.startswith(("http://", "https://")):
            raise SettingsError("CLAUDEOPUS_UPSTREAM_URL must start with http:// or https://")
        if len(self.service_token) < 32:
            raise SettingsError(
                "CLAUDEOPUS_SERVICE_TOKEN must be set to the control plane's service token (32+ characters)"
            )
        if not 0 <= self.upstream_connect_retries <= MAX_CONNECT_RETRIES:
            raise SettingsError(f"CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES must be from 0 to {MAX_CONNECT_RETRIES}")
        split_address(self.http_address, "CLAUDEOPUS_HTTP")
        split_address(self.control_target, "CLAUDEOPUS_CONTROL")
        if not self.spool_dir.strip():
            raise SettingsError("CLAUDEOPUS_SPOOL_DIR must be a directory path")
        if not 0 <= self.settle_linger <= MAX_SETTLE_LINGER:
            raise SettingsError(f"CLAUDEOPUS_SETTLE_LINGER must be from 0 to {MAX_SETTLE_LINGER:g} seconds")
        if self.lease_seconds and not MIN_LEASE_SECONDS <= self.lease_seconds <= MAX_LEASE_SECONDS:
            raise SettingsError(
                "CLAUDEOPUS_LEASE_SECONDS must be 0 (off) "
                f"or from {MIN_LEASE_SECONDS:g} to {MAX_LEASE_SECONDS:g} seconds"
            )
        if self.spool_max_bytes < 1:
            raise SettingsError("CLAUDEOPUS_SPOOL_MAX_BYTES must be a positive number of bytes")
        if self.access_log_path is not None:
            _check_log_file(self.access_log_path, "CLAUDEOPUS_ACCESS_LOG")
        if self.access_log_rotate_seconds < 1:
            raise SettingsError("CLAUDEOPUS_ACCESS_LOG_ROTATE must be at least 1s")
        if self.access_log_keep < 1:
            raise SettingsError("CLAUDEOPUS_ACCESS_LOG_KEEP must be at least 1")
        if self.access_log_max_bytes < MIN_ACCESS_LOG_MAX_BYTES:
            raise SettingsError(f"CLAUDEOPUS_ACCESS_LOG_MAX_BYTES must be at least {MIN_ACCESS_LOG_MAX_BYTES}")
        tls.check_server(self.tls_cert, self.tls_key, names=(*TLS_SETTINGS, ""))
        tls.check_client(self.control_ca, self.control_client_cert, self.control_client_key, names=CONTROL_CLIENT_TLS)

    @property
    def http_host(self) -> str:
        return split_address(self.http_address, "CLAUDEOPUS_HTTP")[0]

    @property
    def http_port(self) -> int:
        return split_address(self.http_address, "CLAUDEOPUS_HTTP")[1]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Unpack[EdgeOverrides]) -> EdgeSettings:
        """Read ``CLAUDEOPUS_*`` variables once (this process's when ``environ`` is None).

        ``overrides`` are command-line values (None: not given); each wins over its variable.
        """
        env, given = layered(environ, overrides, OVERRIDABLE)
        values: dict[str, Any] = dict(
            upstream_url=env.get("CLAUDEOPUS_UPSTREAM_URL", ""),
            service_token=env.get("CLAUDEOPUS_SERVICE_TOKEN", ""),
            upstream_api_key=env.get("CLAUDEOPUS_UPSTREAM_API_KEY", ""),
            http_address=env.get("CLAUDEOPUS_HTTP", DEFAULT_HTTP_ADDRESS),
            control_target=env.get("CLAUDEOPUS_CONTROL", DEFAULT_CONTROL),
            upstream_connect_timeout=_number(env, "CLAUDEOPUS_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            upstream_read_timeout=_number(env, "CLAUDEOPUS_UPSTREAM_READ_TIMEOUT", 300.0),
            upstream_max_duration=_number(env, "CLAUDEOPUS_UPSTREAM_MAX_DURATION", 600.0),
            upstream_connect_retries=_retries(env, "CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES", 1),
            control_timeout=_number(env, "CLAUDEOPUS_CONTROL_TIMEOUT", 5.0),
            max_body_bytes=int(_number(env, "CLAUDEOPUS_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            upstream_max_tokens_field=env.get("CLAUDEOPUS_UPSTREAM_MAX_TOKENS_FIELD", "max_completion_tokens"),
            max_choices=_count(env, "CLAUDEOPUS_MAX_CHOICES", DEFAULT_MAX_CHOICES),
            models_owned_by=env.get("CLAUDEOPUS_MODELS_OWNED_BY", "") or DEFAULT_MODELS_OWNED_BY,
            spool_dir=env.get("CLAUDEOPUS_SPOOL_DIR", "") or DEFAULT_SPOOL_DIR,
            spool_max_bytes=int(_number(env, "CLAUDEOPUS_SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES)),
            settle_linger=_seconds_or_zero(env, "CLAUDEOPUS_SETTLE_LINGER", DEFAULT_SETTLE_LINGER),
            lease_seconds=_seconds_or_zero(env, "CLAUDEOPUS_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
            access_log_path=_access_log_path(env.get("CLAUDEOPUS_ACCESS_LOG", "")),
            access_log_rotate_seconds=_window(env, "CLAUDEOPUS_ACCESS_LOG_ROTATE", 3600),
            access_log_keep=_count(env, "CLAUDEOPUS_ACCESS_LOG_KEEP", 24),
            access_log_max_bytes=int(_number(env, "CLAUDEOPUS_ACCESS_LOG_MAX_BYTES", DEFAULT_ACCESS_LOG_MAX_BYTES)),
            access_log_stdout=flag(env, "CLAUDEOPUS_ACCESS_LOG_STDOUT"),
            tls_cert=env.get(TLS_SETTINGS[0], ""),
            tls_key=env.get(TLS_SETTINGS[1], ""),
            control_ca=env.get(CONTROL_CLIENT_TLS[0], ""),
            control_client_cert=env.get(CONTROL_CLIENT_TLS[1], ""),
            control_client_key=env.get(CONTROL_CLIENT_TLS[2], ""),
            upstream_ca_file=env.get("SSL_CERT_FILE", ""),
            log_level=env.get("CLAUDEOPUS_LOG_LEVEL", "") or DEFAULT_LOG_LEVEL,
        )
        return cls(**{**values, **given})


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number, got {raw!r}")
    return value


def _seconds_or_zero(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw in ("0", "0.0"):
        return 0.0
    return _number(env, name, default)


DEFAULT_ACCESS_LOG = "logs/access.log"
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_ACCESS_LOG_WINDOW = 366 * 86400


def _check_log_file(path: str, name: str) -> None:
    """Refuse, before anything starts, a log file that cannot be created or appended to."""
    if not path.strip():
        raise SettingsError(f"{name} must be a file path or off")
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise SettingsError(f"{name} is a directory, not a file: {path!r}")
    if os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise SettingsError(f"{name} is not writable: {path!r} (use another path, or off)")
        return
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SettingsError(f"{name} cannot be created: {parent!r} is no writable directory (use another path, or off)")


def _access_log_path(raw: str) -> str | None:
    """``CLAUDEOPUS_ACCESS_LOG``: a path, ``off`` for no file; unset means logs/access.log."""
    if raw.strip().lower() == "off":
        return None
    return raw or DEFAULT_ACCESS_LOG


def _window(env: Mapping[str, str], name: str, default: int) -> int:
    """A rotation window such as ``30s``, ``10m``, ``1h`` or ``1d``, in seconds."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    digits, unit = raw[:-1], raw[-1:]
    valid = unit in _WINDOW_UNITS and digits.isascii() and digits.isdigit() and len(digits) <= 8
    if not valid or not 1 <= int(digits) * _WINDOW_UNITS[unit] <= MAX_ACCESS_LOG_WINDOW:
        raise SettingsError(f"{name} must be a window from 1s to 366d like 30s, 10m, 1h or 1d, got {raw!r}")
    return int(digits) * _WINDOW_UNITS[unit]


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or int(raw) < 1:
        raise SettingsError(f"{name} must be a whole number from 1 to 999999, got {raw!r}")
    return int(raw)


def _retries(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or int(raw) > MAX_CONNECT_RETRIES:
        raise SettingsError(f"{name} must be a whole number from 0 to {MAX_CONNECT_RETRIES}, got {raw!r}")
    return int(raw)
