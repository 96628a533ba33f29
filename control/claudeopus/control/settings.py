"""Settings of the control plane, read once into a typed, immutable object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from claudeopus import tls
from claudeopus.control.secrets import SECRETS_KEY_VARIABLE, parse_keys
from claudeopus.gateway_limits import MAX_OUTPUT_TOKENS
from claudeopus.settings import DEFAULT_LOG_LEVEL, SettingsError, layered

DEFAULT_DATABASE_URL = "sqlite://./claudeopus.db"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"
DEFAULT_BOOTSTRAP_TOKEN_FILE = "claudeopus-bootstrap.token"
MAX_CACHED_KEYS = 10_000_000
TLS_SETTINGS = ("CLAUDEOPUS_CONTROL_TLS_CERT", "CLAUDEOPUS_CONTROL_TLS_KEY", "CLAUDEOPUS_CONTROL_CLIENT_CA")
# The settings a command-line flag may override, and the variable each replaces.
OVERRIDABLE = {
    "grpc_address": "CLAUDEOPUS_GRPC",
    "database_url": "CLAUDEOPUS_DATABASE_URL",
    "service_token": "CLAUDEOPUS_SERVICE_TOKEN",
    "tls_cert": TLS_SETTINGS[0],
    "tls_key": TLS_SETTINGS[1],
    "tls_client_ca": TLS_SETTINGS[2],
    "log_level": "CLAUDEOPUS_LOG_LEVEL",
}


class ControlOverrides(TypedDict, total=False):
    """Command-line values for :meth:`ControlSettings.from_env`; None means the flag was not given."""

    grpc_address: str | None
    database_url: str | None
    service_token: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    log_level: str | None


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """Everything the control plane needs to start.

    Example::

        settings = ControlSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": "..."})
    """

    grpc_address: str = DEFAULT_GRPC_ADDRESS
    database_url: str = DEFAULT_DATABASE_URL
    # Shared secret the edge presents to the internal gateway service.
    service_token: str = field(default="", repr=False)
    # Output tokens reserved for a request that names no max_tokens: per model, else the default.
    default_max_output_tokens: int = 4096
    model_max_output_tokens: tuple[tuple[str, int], ...] = ()
    # A reservation no edge settled within this many seconds is closed as EXPIRED by the sweeper,
    # which looks every sweep_interval seconds.
    reservation_timeout: float = 900.0
    sweep_interval: float = 30.0
    # gRPC over TLS when a certificate and key (PEM files) are set; with tls_client_ca, every client
    # must present a certificate signed by it (mutual TLS). Plain text when unset.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Keys whose authorization context (key, account, suspension, budgets, prices) each control
    # process keeps between requests; any change to those rows empties it (see auth_cache). 0: none.
    auth_cache_keys: int = 10_000
    # Where a control that starts with no admin writes the one-time BootstrapAdmin token (0600).
    # Empty: the token stays in memory (an embedding program that bootstraps in-process).
    bootstrap_token_file: str = ""
    # How long a Login session lives, in seconds.
    session_ttl: float = 12 * 3600.0
    # Threads for argon2 hashing and verification (apart from the default executor).
    password_workers: int = 1
    # Login attempts per minute per client address; failed logins (and wrong current passwords)
    # per hour per email; account creations refused for a taken email per hour per caller.
    login_attempts_per_minute: int = 30
    login_failures_per_hour: int = 20
    email_probes_per_hour: int = 20
    # Calls of one management method (or of Login) served at once; more are refused with
    # RESOURCE_EXHAUSTED. The gateway service is never limited.
    method_concurrency: int = 32
    login_concurrency: int = 4
    # debug, info or warning: ClaudeOpus's own loggers (libraries never log below info).
    log_level: str = DEFAULT_LOG_LEVEL
    # CLAUDEOPUS_SECRETS_KEY: the keys that seal upstream credentials, current first (see secrets.py).
    secrets_keys: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.service_token) < 32:
            raise SettingsError(
                "CLAUDEOPUS_SERVICE_TOKEN must be set to a shared secret of at least 32 characters "
                "(the same value on edge and control); for example: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if not self.database_url.startswith(("sqlite://", "postgres://", "postgresql://", "asyncpg://")):
            raise SettingsError("CLAUDEOPUS_DATABASE_URL must start with sqlite://, postgres:// or postgresql://")
        tls.check_server(self.tls_cert, self.tls_key, self.tls_client_ca, names=TLS_SETTINGS)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Unpack[ControlOverrides]
    ) -> ControlSettings:
        """Read ``CLAUDEOPUS_*`` variables once (this process's when ``environ`` is None).

        ``overrides`` are command-line values (None: not given); each wins over its variable.
        """
        env, given = layered(environ, overrides, OVERRIDABLE)
        values: dict[str, Any] = dict(
            grpc_address=env.get("CLAUDEOPUS_GRPC", DEFAULT_GRPC_ADDRESS),
            database_url=env.get("CLAUDEOPUS_DATABASE_URL", DEFAULT_DATABASE_URL),
            service_token=env.get("CLAUDEOPUS_SERVICE_TOKEN", ""),
            tls_cert=env.get(TLS_SETTINGS[0], ""),
            tls_key=env.get(TLS_SETTINGS[1], ""),
            tls_client_ca=env.get(TLS_SETTINGS[2], ""),
            log_level=env.get("CLAUDEOPUS_LOG_LEVEL", "") or DEFAULT_LOG_LEVEL,
            default_max_output_tokens=_tokens(
                "CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", env.get("CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", "4096")
            ),
            model_max_output_tokens=_model_tokens(env.get("CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS", "")),
            reservation_timeout=_seconds(
                "CLAUDEOPUS_RESERVATION_TIMEOUT", env.get("CLAUDEOPUS_RESERVATION_TIMEOUT", "900")
            ),
            sweep_interval=_seconds("CLAUDEOPUS_SWEEP_INTERVAL", env.get("CLAUDEOPUS_SWEEP_INTERVAL", "30")),
            auth_cache_keys=_count("CLAUDEOPUS_AUTH_CACHE_KEYS", env.get("CLAUDEOPUS_AUTH_CACHE_KEYS", "10000")),
            bootstrap_token_file=env.get("CLAUDEOPUS_BOOTSTRAP_TOKEN_FILE", DEFAULT_BOOTSTRAP_TOKEN_FILE),
            session_ttl=_seconds("CLAUDEOPUS_SESSION_TTL", env.get("CLAUDEOPUS_SESSION_TTL", "43200")),
            password_workers=_limit(env, "password_workers"),
            login_attempts_per_minute=_limit(env, "login_attempts_per_minute"),
            login_failures_per_hour=_limit(env, "login_failures_per_hour"),
            email_probes_per_hour=_limit(env, "email_probes_per_hour"),
            method_concurrency=_limit(env, "method_concurrency"),
            login_concurrency=_limit(env, "login_concurrency"),
            secrets_keys=parse_keys(env.get(SECRETS_KEY_VARIABLE, "")),
        )
        return cls(**{**values, **given})


LIMITS = {
    # setting: (environment variable, default, largest)
    "password_workers": ("CLAUDEOPUS_PASSWORD_WORKERS", 1, 64),
    "login_attempts_per_minute": ("CLAUDEOPUS_LOGIN_ATTEMPTS_PER_MINUTE", 30, 1_000_000),
    "login_failures_per_hour": ("CLAUDEOPUS_LOGIN_FAILURES_PER_HOUR", 20, 1_000_000),
    "email_probes_per_hour": ("CLAUDEOPUS_EMAIL_PROBES_PER_HOUR", 20, 1_000_000),
    "method_concurrency": ("CLAUDEOPUS_METHOD_CONCURRENCY", 32, 100_000),
    "login_concurrency": ("CLAUDEOPUS_LOGIN_CONCURRENCY", 4, 100_000),
}


def _limit(env: Mapping[str, str], setting: str) -> int:
    name, default, largest = LIMITS[setting]
    raw = env.get(name, str(default))
    value = raw.strip()
    if not (value.isascii() and value.isdecimal()) or not 1 <= int(value) <= largest:
        raise SettingsError(f"{name} must be a whole number from 1 to {largest:,}, got {raw!r}")
    return int(value)


def _count(name: str, raw: str) -> int:
    value = raw.strip()
    if not (value.isascii() and value.isdecimal()) or int(value) > MAX_CACHED_KEYS:
        raise SettingsError(f"{name} must be a whole number from 0 to {MAX_CACHED_KEYS:,}, got {raw!r}")
    return int(value)


def _tokens(name: str, raw: str) -> int:
    value = raw.strip()
    if not (value.isascii() and value.isdecimal()) or not 1 <= int(value) <= MAX_OUTPUT_TOKENS:
        raise SettingsError(f"{name} must be a whole number from 1 to {MAX_OUTPUT_TOKENS}, got {raw!r}")
    return int(value)


def _model_tokens(raw: str) -> tuple[tuple[str, int], ...]:
    """``model=tokens,model=tokens`` (models may not contain ``,`` or ``=``)."""
    name = "CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS"
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        model, sep, tokens = item.rpartition("=")
        if not sep or not model.strip():
            raise SettingsError(f"{name} must look like 'model-a=8192,model-b=16384', got {raw!r}")
        pairs.append((model.strip(), _tokens(name, tokens)))
    return tuple(pairs)


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 10**7:
        raise SettingsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value
