"""Child processes of the benchmark: started with logs in files, stopped by their own pid, measured in /proc.

Example::

    process = Process("edge", [sys.executable, "-m", "bench.bare_edge", ...], {}, log_dir)
    wait_for_http(process, "http://127.0.0.1:8081/v1/models")
    print(memory(process.pid).rss_mb)
    process.stop()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A child process whose stdout/stderr go to files in ``log_dir``."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(  # noqa: S603 - argv built by the benchmark, no shell
                list(argv),
                env={**os.environ, **env},
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=log_dir,
            )
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, limit: int = 4000) -> str:
        text = self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")
        return text[-limit:]

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting; :meth:`stop` waits."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> int:
        """SIGTERM (once), then SIGKILL if it does not exit in time; returns the exit status."""
        if self.alive() and not self._terminated:
            self.terminate()
        if self.alive():
            try:
                self.popen.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def logged_errors(self) -> int:
        """Lines at ERROR or above in its output (the gateway's log format: ``time LEVEL logger: message``)."""
        text = self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line)

    def fail(self, why: str) -> RuntimeError:
        return RuntimeError(f"{self.name}: {why}\n--- output (tail) ---\n{self.output()}")


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident set size now and its high-water mark, in bytes (from /proc/PID/status)."""

    rss: int
    peak: int

    @property
    def rss_mb(self) -> float:
        return self.rss / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024  # kB
    return Memory(rss=fields.get("VmRSS", 0), peak=fields.get("VmHWM", 0))


def wait_for_http(process: Process, url: str) -> None:
    """Until ``url`` answers at all (any status), or the process dies, or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.fail("exited during start-up")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise process.fail("not serving HTTP in time")


def wait_for_grpc(process: Process, target: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with grpc.insecure_channel(target) as channel:
        # The typeshed stubs of grpc_health declare no methods on HealthStub: call the method by name.
        check = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            if not process.alive():
                raise process.fail("exited during start-up")
            try:
                reply = check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise process.fail("not serving gRPC in time")


class RssSampler(threading.Thread):
    """Samples the RSS of some processes about once a second while the block runs."""

    INTERVAL_SECONDS = 1.0

    def __init__(self, pids: list[int], start: float) -> None:
        super().__init__(daemon=True)
        self._pids = pids
        self._start = start
        self._stop_event = threading.Event()
        self.samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        while not self._stop_event.wait(self.INTERVAL_SECONDS):
            elapsed = round(time.monotonic() - self._start, 1)
            for pid in self._pids:
                with contextlib.suppress(OSError):
                    self.samples[pid].append((elapsed, round(memory(pid).rss_mb, 1)))
