"""The two outside tools, nginx and wrk: found on this machine, or installed from Debian's packages.

Example::

    tools = ensure_tools(install=True)  # apt-get install nginx-light wrk when missing (root only)
    print(tools.nginx, tools.wrk)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

# nginx lives in sbin, which is not on every PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# Debian package names, best first: nginx-light is the small flavour (a dependency of nginx on
# bookworm, a transitional package on later releases); plain nginx is the fallback.
_PACKAGES = {"nginx": ("nginx-light", "nginx"), "wrk": ("wrk",)}
APT_TIMEOUT_SECONDS = 600


class ToolsMissing(RuntimeError):
    """nginx or wrk is not installed and could not be installed; the message says how to get them."""


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    wrk: str


def find(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def find_tools() -> Tools | None:
    nginx, wrk = find("nginx"), find("wrk")
    return Tools(nginx=nginx, wrk=wrk) if nginx and wrk else None


def ensure_tools(*, install: bool) -> Tools:
    """The tools' paths; with ``install``, missing ones come from apt (needs root and a Debian-like system)."""
    missing = [name for name in _PACKAGES if find(name) is None]
    if missing and install:
        _apt_install(missing)
    found = find_tools()
    if found is None:
        still = " and ".join(name for name in _PACKAGES if find(name) is None)
        raise ToolsMissing(
            f"{still} not installed; install with `apt-get install -y nginx-light wrk` "
            "(or run the benchmark as root without --no-install)"
        )
    return found


def _apt_install(missing: list[str]) -> None:
    apt = find("apt-get")
    if apt is None or os.geteuid() != 0:
        return  # ensure_tools reports what is missing
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for updated in (False, True):
        if updated:
            _run([apt, "update", "-q"], env)
        for choice in range(max(len(_PACKAGES[name]) for name in missing)):
            packages = [_PACKAGES[name][min(choice, len(_PACKAGES[name]) - 1)] for name in missing]
            print(f"bench: installing {' '.join(packages)} with apt-get", flush=True)
            if _run([apt, "install", "-y", "-q", "--no-install-recommends", *packages], env):
                return


def _run(command: list[str], env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=APT_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0
