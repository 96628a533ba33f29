"""Settings of the edge, read once into a typed, immutable object."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
DEFAULT_CONTROL = "127.0.0.1:50051"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


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
    upstream_max_connections: int = 512
    # How long authorize may take before the edge fails closed with 503.
    control_timeout: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    # The request field that carries a budget's default output cap to the upstream, when the
    # client named none: max_completion_tokens (OpenAI) or max_tokens (older compatible servers).
    upstream_max_tokens_field: str = "max_completion_tokens"

    def __post_init__(self) -> None:
        if self.upstream_max_tokens_field not in ("max_completion_tokens", "max_tokens"):
            raise SettingsError("CLAUDEOPUS_UPSTREAM_MAX_TOKENS_FIELD must be max_completion_tokens or max_tokens")
        if not self.upstream_url.startswith(("http://", "https://")):
            raise SettingsError("CLAUDEOPUS_UPSTREAM_URL must start with http:// or https://")
        if len(self.service_token) < 32:
            raise SettingsError(
                "CLAUDEOPUS_SERVICE_TOKEN must be set to the control plane's service token (32+ characters)"
            )
        split_address(self.http_address, "CLAUDEOPUS_HTTP")
        split_address(self.control_target, "CLAUDEOPUS_CONTROL")

    @property
    def http_host(self) -> str:
        return split_address(self.http_address, "CLAUDEOPUS_HTTP")[0]

    @property
    def http_port(self) -> int:
        return split_address(self.http_address, "CLAUDEOPUS_HTTP")[1]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> EdgeSettings:
        """Read ``CLAUDEOPUS_*`` variables; non-empty ``overrides`` (command-line flags) win."""
        env = {**(os.environ if environ is None else environ)}
        names = {
            "upstream_url": "CLAUDEOPUS_UPSTREAM_URL",
            "service_token": "CLAUDEOPUS_SERVICE_TOKEN",
            "upstream_api_key": "CLAUDEOPUS_UPSTREAM_API_KEY",
            "http_address": "CLAUDEOPUS_HTTP",
            "control_target": "CLAUDEOPUS_CONTROL",
        }
        env.update({names[k]: v for k, v in overrides.items() if v})
        return cls(
            upstream_url=env.get("CLAUDEOPUS_UPSTREAM_URL", ""),
            service_token=env.get("CLAUDEOPUS_SERVICE_TOKEN", ""),
            upstream_api_key=env.get("CLAUDEOPUS_UPSTREAM_API_KEY", ""),
            http_address=env.get("CLAUDEOPUS_HTTP", DEFAULT_HTTP_ADDRESS),
            control_target=env.get("CLAUDEOPUS_CONTROL", DEFAULT_CONTROL),
            upstream_connect_timeout=_number(env, "CLAUDEOPUS_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            upstream_read_timeout=_number(env, "CLAUDEOPUS_UPSTREAM_READ_TIMEOUT", 300.0),
            control_timeout=_number(env, "CLAUDEOPUS_CONTROL_TIMEOUT", 5.0),
            max_body_bytes=int(_number(env, "CLAUDEOPUS_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            upstream_max_tokens_field=env.get("CLAUDEOPUS_UPSTREAM_MAX_TOKENS_FIELD", "max_completion_tokens"),
        )


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
