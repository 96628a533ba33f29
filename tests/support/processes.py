"""Real ``claudeopus`` processes for end-to-end tests, on loopback, with captured output."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import admin
from tests.support.fake_upstream import FakeUpstream

CLI = str(Path(sys.executable).parent / "claudeopus")
START_TIMEOUT = 30.0
# The key the gateway fixture's edge presents to the fake upstream: never to be seen by a client.
UPSTREAM_KEY = "upstream-secret-" + "k" * 24


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A child process whose stdout/stderr go to files we can read afterwards."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        full_env = {**os.environ, **env}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [CLI, *args], env=full_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=log_dir
            )

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def fail(self, why: str) -> AssertionError:
        return AssertionError(f"{self.name}: {why}\n--- output ---\n{self.output()}")


def _grpc_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def wait_for_grpc(process: Process, port: int, credentials: grpc.ChannelCredentials | None = None) -> None:
    """Poll health until SERVING; ``credentials`` for a control plane serving TLS."""
    deadline = time.monotonic() + START_TIMEOUT
    with _grpc_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not process.alive():
                raise process.fail("exited during start-up")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise process.fail("not serving gRPC in time")


def wait_for_http(process: Process, port: int, tls_ca: str | None = None) -> None:
    """Poll until the edge answers; ``tls_ca`` (a PEM file) for an edge serving HTTPS."""
    deadline = time.monotonic() + START_TIMEOUT
    scheme, verify = ("https", ssl.create_default_context(cafile=tls_ca)) if tls_ca else ("http", True)
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.fail("exited during start-up")
        try:
            httpx.get(f"{scheme}://127.0.0.1:{port}/v1/models", timeout=1, verify=verify)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise process.fail("not serving HTTP in time")


def start_control(
    database_url: str,
    token: str,
    log_dir: Path,
    name: str = "control",
    *,
    env: Mapping[str, str] | None = None,
    grpc_credentials: grpc.ChannelCredentials | None = None,
    port: int | None = None,
) -> tuple[Process, int]:
    """Start ``claudeopus control``; ``env`` adds (or overrides) environment variables.

    ``grpc_credentials`` are what the start-up health check presents, for a control serving TLS.
    """
    port = port or free_port()  # a given port: to restart a control where its edges look for it
    variables = {"CLAUDEOPUS_SERVICE_TOKEN": token, "CLAUDEOPUS_DATABASE_URL": database_url, **(env or {})}
    process = Process(name, ["control", "--grpc", f"127.0.0.1:{port}", "--log-level", "debug"], variables, log_dir)
    wait_for_grpc(process, port, grpc_credentials)
    return process, port


def start_edge(
    control_port: int,
    upstream_url: str,
    token: str,
    log_dir: Path,
    *,
    upstream_key: str = "",
    name: str = "edge",
    env: Mapping[str, str] | None = None,
    tls_ca: str | None = None,
    spool_dir: Path | None = None,
) -> tuple[Process, int]:
    """Start ``claudeopus edge``; ``env`` adds (or overrides) environment variables.

    ``tls_ca`` (a PEM file) is what the start-up check trusts, for an edge serving HTTPS.
    """
    port = free_port()
    # Each edge locks its usage spool directory: by default one per name (given again, a restart replays it).
    spool = str(spool_dir or log_dir / f"{name}.spool")
    variables = {
        "CLAUDEOPUS_SERVICE_TOKEN": token,
        "CLAUDEOPUS_UPSTREAM_API_KEY": upstream_key,
        "CLAUDEOPUS_SPOOL_DIR": spool,
        **(env or {}),
    }
    args = [
        "edge",
        "--control",
        f"127.0.0.1:{control_port}",
        "--http",
        f"127.0.0.1:{port}",
        "--upstream-url",
        upstream_url,
        "--log-level",
        "debug",
    ]
    process = Process(name, args, variables, log_dir)
    wait_for_http(process, port, tls_ca)
    return process, port


@dataclass
class Gateway:
    """Real control and edge processes, a fake upstream, and the bootstrapped admin."""

    database_url: str
    control_target: str
    edge_url: str
    admin_key: str
    upstream: FakeUpstream
    processes: list[Process] = field(default_factory=list)

    def new_user_key(self, **key_options: object) -> tuple[str, str]:
        """A fresh user account with one inference key: (key resource name, secret)."""

        async def make(client):  # type: ignore[no-untyped-def]
            email = f"user-{secrets.token_hex(4)}@example.com"
            account = await client.create_account(email=email, role="user")
            created = await client.create_api_key(parent=account.name, **key_options)
            return created.api_key.name, created.secret

        return admin.call(self.control_target, self.admin_key, make)

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes)
