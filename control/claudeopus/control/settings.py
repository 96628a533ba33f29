"""Settings of the control plane, read once into a typed, immutable object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_DATABASE_URL = "sqlite://./claudeopus.db"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


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

    def __post_init__(self) -> None:
        if len(self.service_token) < 32:
            raise SettingsError(
                "CLAUDEOPUS_SERVICE_TOKEN must be set to a shared secret of at least 32 characters "
                "(the same value on edge and control); for example: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if not self.database_url.startswith(("sqlite://", "postgres://", "postgresql://", "asyncpg://")):
            raise SettingsError("CLAUDEOPUS_DATABASE_URL must start with sqlite://, postgres:// or postgresql://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> ControlSettings:
        env = os.environ if environ is None else environ
        values = {
            "grpc_address": env.get("CLAUDEOPUS_GRPC", DEFAULT_GRPC_ADDRESS),
            "database_url": env.get("CLAUDEOPUS_DATABASE_URL", DEFAULT_DATABASE_URL),
            "service_token": env.get("CLAUDEOPUS_SERVICE_TOKEN", ""),
        }
        values.update({k: v for k, v in overrides.items() if v})
        return cls(**values)
