"""A flood of failed logins against control, run while the full path is measured.

``python -m bench.login_flood --target HOST:PORT --seconds N --rate R`` sends R Login calls a
second for N seconds (up to :data:`CONCURRENCY` in flight), each with a fresh unknown email and
a wrong password (every one costs control an argon2 verification, unless refused first), then
prints how each call ended as one JSON line. The rate is fixed so that the flooding client's
own CPU, on the same machine as what is measured, stays the same from run to run.

The benchmark's control runs with the per-address and per-email login limits lifted
(:data:`FLOOD_CONTROL_ENV`), as if the flood came from many addresses: what is left to protect
the hot path is the hashing pool (its own threads, lowest CPU priority) and the bound on
concurrent Login calls.

Example::

    with LoginFlood(control_target, workdir, seconds=10):
        run_load(...)   # the full path, measured under the flood
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType

import grpc

from bench.procs import Process
from claudeopus.v1 import accounts_pb2, accounts_pb2_grpc

CONCURRENCY = 32
RATE = 500.0  # Login calls per second
CALL_TIMEOUT_SECONDS = 10.0
# What the benchmark's control runs with: no per-address or per-email limit on logins.
FLOOD_CONTROL_ENV = {
    "CLAUDEOPUS_LOGIN_ATTEMPTS_PER_MINUTE": "1000000",
    "CLAUDEOPUS_LOGIN_FAILURES_PER_HOUR": "1000000",
}


async def flood(target: str, seconds: float, rate: float, outcomes: Counter[str]) -> None:
    """``rate`` failing Login calls a second for ``seconds``, counting how each ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    next_slot = [loop.time()]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = accounts_pb2_grpc.AccountServiceStub(channel)

        async def caller(index: int) -> None:
            attempt = 0
            while loop.time() < deadline:
                slot = max(next_slot[0], loop.time())
                next_slot[0] = slot + 1 / rate
                await asyncio.sleep(slot - loop.time())
                attempt += 1
                request = accounts_pb2.LoginRequest(
                    email=f"flood-{index}-{attempt}@bench.invalid", password=f"not the password {attempt}"
                )
                try:
                    await stub.Login(request, timeout=CALL_TIMEOUT_SECONDS)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

        await asyncio.gather(*(caller(index) for index in range(CONCURRENCY)))


class LoginFlood:
    """The flood as a child process for the length of a ``with`` block (stopped at its end)."""

    def __init__(self, target: str, log_dir: Path, *, seconds: float, rate: float = RATE) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "bench.login_flood",
            "--target",
            target,
            "--seconds",
            str(seconds),
            "--rate",
            str(rate),
        ]
        self._log_dir = log_dir
        self._process: Process | None = None
        self.outcomes: dict[str, int] = {}

    def __enter__(self) -> LoginFlood:
        # The child starts in the log directory: put the repository (bench's parent) on its path.
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self._process = Process("login-flood", self._argv, {"PYTHONPATH": path}, self._log_dir)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._process is not None
        self._process.stop()
        lines = self._process.stdout_path.read_text().splitlines()
        self.outcomes = json.loads(lines[-1]) if lines else {}


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="control's HOST:PORT (loopback)")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=RATE, help=f"Login calls per second (default {RATE:g})")
    args = parser.parse_args(argv)
    outcomes: Counter[str] = Counter()
    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(KeyboardInterrupt):  # stopped early: report what was done
        asyncio.run(flood(args.target, args.seconds, args.rate, outcomes))
    print(json.dumps(dict(outcomes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
