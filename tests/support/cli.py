"""Running the real ``claudeopus`` console script as a child process, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import CLI

TIMEOUT = 30.0
SECRET_PATTERN = r"^sk-co-[A-Za-z0-9_-]{43,}$"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any CLAUDEOPUS_* setting, plus ``extra``.

    Nothing from the developer's shell (an admin key, an upstream URL, a service
    token) may leak into a child and change what a test observes. COLUMNS is
    pinned so rich's tables have a known width when stdout is not a terminal.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDEOPUS_")}
    env["COLUMNS"] = "120"
    env.update(extra or {})
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"stdout is not JSON ({error}):\n{self.describe()}") from None

    def describe(self) -> str:
        command = " ".join(self.args)
        return f"$ claudeopus {command}\nexit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def ok(self) -> Result:
        assert self.returncode == 0, self.describe()
        assert "Traceback" not in self.stderr, self.describe()
        return self


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = TIMEOUT
) -> Result:
    """Run ``claudeopus ARGS`` to completion (bounded) and capture its output."""
    done = subprocess.run(
        [CLI, *args],
        env=clean_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(list(args), done.returncode, done.stdout, done.stderr)
