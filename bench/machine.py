"""What the run ran on: CPU, cores, Python, tool versions, load, the commit measured.

Example::

    info = machine_info(tools, "postgres://postgres@127.0.0.1:5432")
    print(info["cpu_model"], info["cores"])
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench import gateway
from bench.tools import Tools, find

_REPOSITORY = Path(__file__).resolve().parent.parent


def machine_info(tools: Tools, postgres: str) -> dict[str, object]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gb": round(_memory_bytes() / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "nginx": _version([tools.nginx, "-v"]),
        "wrk": _version([tools.wrk, "-v"]).split(" Copyright")[0],
        "database": gateway.server_version(postgres) if postgres else "",
        "commit": _commit(),
        "load_average_start": load_average(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return ""
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else ""


def _commit() -> str:
    git = find("git")
    if git is None:
        return ""
    try:
        head = subprocess.run(  # noqa: S603
            [git, "-C", str(_REPOSITORY), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            [git, "-C", str(_REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return ""
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""
