"""Settings of ``claudeopus serve``: control and edge in one process, read once, before anything starts."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from claudeopus.control.settings import ControlSettings
from claudeopus.edge.settings import EdgeSettings, split_address
from claudeopus.settings import SettingsError, layered

# The edge's upstream until the built-in demo upstream listens (on a port chosen then).
DEMO_UPSTREAM_PENDING = "http://127.0.0.1:1/v1"
# CLAUDEOPUS_WORKERS: edge processes beside control (see cli/workers.py); 0 runs the edge in-process.
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The settings of both parts; the edge reaches the control beside it with a token made here.

    Example::

        settings = ServeSettings.from_env(http_address="127.0.0.1:8080")  # flags win over CLAUDEOPUS_*
        async with ControlServer(settings.control): ...
        edge = settings.edge if not settings.demo_upstream else settings.with_upstream(demo_url).edge
    """

    control: ControlSettings
    edge: EdgeSettings
    # No upstream configured: the edge forwards to the built-in demo upstream.
    demo_upstream: bool = False
    # Edge processes beside control (CLAUDEOPUS_WORKERS); 0: the edge in the serve process.
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= MAX_WORKERS:
            raise SettingsError(f"CLAUDEOPUS_WORKERS must be from 0 to {MAX_WORKERS}")
        # The built-in edge talks to the built-in control: over TLS it must trust (and satisfy) it.
        if self.control.tls_cert and not self.edge.control_ca:
            raise SettingsError(
                "CLAUDEOPUS_CONTROL_TLS_CERT needs CLAUDEOPUS_CONTROL_CA in serve (the built-in edge verifies control)"
            )
        if self.control.tls_client_ca and not self.edge.control_client_cert:
            raise SettingsError(
                "CLAUDEOPUS_CONTROL_CLIENT_CA needs CLAUDEOPUS_CONTROL_CLIENT_CERT and _KEY in serve "
                "(the built-in edge presents them to control)"
            )

    @property
    def log_level(self) -> str:
        return self.control.log_level

    def with_upstream(self, url: str) -> ServeSettings:
        """The same settings with the edge forwarding to ``url`` (the demo upstream, once it listens)."""
        return dataclasses.replace(self, edge=dataclasses.replace(self.edge, upstream_url=url))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_address: str | None = None,
        grpc_address: str | None = None,
        database_url: str | None = None,
        upstream_url: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        access_log_stdout: bool | None = None,
        log_level: str | None = None,
        workers: int | None = None,
    ) -> ServeSettings:
        """Read ``CLAUDEOPUS_*`` variables once; the arguments are command-line values (None: not given).

        The service token is made here, for this process only, whatever CLAUDEOPUS_SERVICE_TOKEN says;
        the edge's control address is the control's own, whatever CLAUDEOPUS_CONTROL says.
        """
        env, given = layered(
            environ,
            {"upstream_url": upstream_url, "workers": workers},
            {"upstream_url": "CLAUDEOPUS_UPSTREAM_URL", "workers": "CLAUDEOPUS_WORKERS"},
        )
        upstream = given.get("upstream_url", env.get("CLAUDEOPUS_UPSTREAM_URL", ""))
        edge_workers = given["workers"] if "workers" in given else _whole(env, "CLAUDEOPUS_WORKERS")
        token = secrets.token_urlsafe(32)  # in-process only: never leaves this process
        control = ControlSettings.from_env(
            env, grpc_address=grpc_address, database_url=database_url, service_token=token, log_level=log_level
        )
        edge = EdgeSettings.from_env(
            env,
            upstream_url=upstream or DEMO_UPSTREAM_PENDING,
            service_token=token,
            http_address=http_address,
            control_target=local_target(control.grpc_address),
            access_log_stdout=access_log_stdout,
            tls_cert=tls_cert,
            tls_key=tls_key,
            log_level=log_level,
        )
        return cls(control=control, edge=edge, demo_upstream=not upstream, workers=edge_workers)


def _whole(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or "0"
    if not raw.isdigit():
        raise SettingsError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def local_target(address: str) -> str:
    """Where a process reaches its own gRPC listener: a wildcard address becomes loopback."""
    host, port = split_address(address, "CLAUDEOPUS_GRPC")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
