"""The server commands' bodies: control, edge, and both together with a demo upstream."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import urllib.parse
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claudeopus.cli.workers import MAX_WORKERS, EdgeWorkers
from claudeopus.client import ClaudeOpusClient
from claudeopus.control.domain.accounts import Bootstrapped
from claudeopus.control.server import ControlServer
from claudeopus.control.settings import ControlSettings
from claudeopus.edge import https
from claudeopus.edge.app import build_app
from claudeopus.edge.demo import MODELS, DemoUpstream
from claudeopus.edge.server import HttpServer
from claudeopus.edge.settings import EdgeSettings, split_address
from claudeopus.private_files import write_private

_log = logging.getLogger("claudeopus")
ADMIN_EMAIL = "admin@claudeopus.local"
DEMO_EMAIL = "demo@claudeopus.local"
FIRST_START_FILE = "claudeopus-first-start.txt"


async def run_control(settings: ControlSettings, stop: asyncio.Event) -> None:
    async with ControlServer(settings) as server:
        _log.info(
            "control plane ready on %s (%s, database %s)", settings.grpc_address, server.security, _db_label(settings)
        )
        await stop.wait()
    _log.info("control plane stopped")


async def run_edge(settings: EdgeSettings, stop: asyncio.Event) -> None:
    async with HttpServer(build_app(settings), settings.http_host, settings.http_port, **_https(settings)):
        _log.info(
            "edge ready on %s://%s (control %s, %s)",
            _scheme(settings),
            settings.http_address,
            settings.control_target,
            _control_link(settings),
        )
        await stop.wait()
    _log.info("edge stopped")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The settings of ``claudeopus serve``, checked before anything starts."""

    http_address: str
    grpc_address: str
    database_url: str
    upstream_url: str
    access_log_stdout: bool = False  # --access-log-stdout; the other access log settings come from the environment
    # HTTPS for the edge (PEM files); the rest of TLS (control's port) comes from CLAUDEOPUS_* variables.
    tls_cert: str = ""
    tls_key: str = ""
    # Edge processes beside the serve process (CLAUDEOPUS_WORKERS, see workers.py); 0: the edge in it.
    workers: int = 0

    def edge_settings(self, upstream_url: str, service_token: str, control_target: str) -> EdgeSettings:
        """The edge's settings: the rest (timeouts, limits, upstream key) from CLAUDEOPUS_* variables."""
        return EdgeSettings.from_env(
            upstream_url=upstream_url,
            service_token=service_token,
            http_address=self.http_address,
            control_target=control_target,
            access_log_stdout="1" if self.access_log_stdout else "",
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )

    def __post_init__(self) -> None:
        split_address(self.http_address, "--http")
        split_address(self.grpc_address, "--grpc")
        if not self.database_url.startswith(("sqlite://", "postgres://", "postgresql://")):
            raise ValueError("--database-url must start with sqlite://, postgres:// or postgresql://")
        if self.upstream_url and not self.upstream_url.startswith(("http://", "https://")):
            raise ValueError("--upstream-url must start with http:// or https://")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"CLAUDEOPUS_WORKERS must be from 0 to {MAX_WORKERS}")
        # Check the environment's edge and control settings now, before anything starts.
        edge = self.edge_settings("http://127.0.0.1:1/v1", "x" * 32, "127.0.0.1:1")
        control = self.control_settings("x" * 32)
        # The built-in edge talks to the built-in control: over TLS it must trust (and satisfy) it.
        if control.tls_cert and not edge.control_ca:
            raise ValueError(
                "CLAUDEOPUS_CONTROL_TLS_CERT needs CLAUDEOPUS_CONTROL_CA in serve (the built-in edge verifies control)"
            )
        if control.tls_client_ca and not edge.control_client_cert:
            raise ValueError(
                "CLAUDEOPUS_CONTROL_CLIENT_CA needs CLAUDEOPUS_CONTROL_CLIENT_CERT and _KEY in serve "
                "(the built-in edge presents them to control)"
            )

    def control_settings(self, service_token: str) -> ControlSettings:
        return ControlSettings.from_env(
            grpc_address=self.grpc_address, database_url=self.database_url, service_token=service_token
        )


async def run_serve(options: ServeOptions, stop: asyncio.Event) -> None:
    """Control and edge in one process; a demo upstream when none is configured."""
    token = secrets.token_urlsafe(32)  # in-process only: never leaves this process
    control_settings = options.control_settings(token)
    async with AsyncExitStack() as stack:
        # The admin is made before the gRPC port listens: no other process can bootstrap first.
        control = await stack.enter_async_context(
            ControlServer(control_settings, bootstrap_as=(ADMIN_EMAIL, "Administrator"))
        )
        upstream_url = options.upstream_url
        if not upstream_url:
            demo = await stack.enter_async_context(HttpServer(DemoUpstream(), "127.0.0.1", 0))
            upstream_url = f"http://127.0.0.1:{demo.port}/v1"
            _banner_demo(upstream_url)
        control_target = _local_target(options.grpc_address)
        edge_settings = options.edge_settings(upstream_url, token, control_target)
        if options.workers:
            level = logging.getLevelName(logging.getLogger("claudeopus").getEffectiveLevel())
            await stack.enter_async_context(EdgeWorkers(edge_settings, options.workers, level, _https(edge_settings)))
        else:
            await stack.enter_async_context(
                HttpServer(
                    build_app(edge_settings), edge_settings.http_host, edge_settings.http_port, **_https(edge_settings)
                )
            )
        if control.bootstrapped is None:
            _log.info("existing installation: admin already bootstrapped (keys are shown only once)")
        else:
            await _first_start(control.bootstrapped, control_target, edge_settings, demo_model=not options.upstream_url)
        _log.info(
            "ClaudeOpus ready: edge %s://%s, control %s",
            _scheme(edge_settings),
            options.http_address,
            options.grpc_address,
        )
        await stop.wait()
    _log.info("ClaudeOpus stopped")


def _https(settings: EdgeSettings) -> dict[str, Any]:
    """uvicorn's TLS options for the edge's port: none for plain HTTP."""
    return https.uvicorn_options(settings.tls_cert, settings.tls_key)


def _scheme(settings: EdgeSettings) -> str:
    return "https" if settings.tls_cert else "http"


def _control_link(settings: EdgeSettings) -> str:
    if settings.control_client_cert:
        return "mutual TLS"
    return "TLS" if settings.control_ca else "plain text"


def _local_target(address: str) -> str:
    host, port = split_address(address, "--grpc")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _db_label(settings: ControlSettings) -> str:
    """Where the database is, without user, password or query parameters."""
    url = urllib.parse.urlsplit(settings.database_url)
    if url.scheme == "sqlite":
        return settings.database_url.split("?")[0]
    return f"{url.scheme}://{url.hostname or ''}{':' + str(url.port) if url.port else ''}{url.path}"


def _banner_demo(url: str) -> None:
    line = "=" * 78
    print(
        f"{line}\n  NO UPSTREAM CONFIGURED: using the built-in DEMO upstream at {url}\n"
        "  It returns canned text, not a real model. Set --upstream-url or\n"
        f"  CLAUDEOPUS_UPSTREAM_URL (and CLAUDEOPUS_UPSTREAM_API_KEY) for a real provider.\n{line}",
        file=sys.stderr,
        flush=True,
    )


async def _first_start(admin: Bootstrapped, control_target: str, edge: EdgeSettings, *, demo_model: bool) -> None:
    """On the very first start (the admin was just bootstrapped): a demo user and its key, and how to call.

    The secrets are printed when stdout is a terminal; otherwise (a service manager, a log
    collector) they go to ``claudeopus-first-start.txt`` (0600) and only its path is printed.
    """
    async with ClaudeOpusClient(
        control_target,
        key=admin.key.secret,
        tls_ca=edge.control_ca,
        tls_cert=edge.control_client_cert,
        tls_key=edge.control_client_key,
    ) as management:
        user = await management.create_account(email=DEMO_EMAIL, role="user", display_name="Demo user")
        created = await management.create_api_key(parent=user.name, display_name="demo")
        if demo_model:
            # Only priced models are served: the demo's canned models are free.
            for demo in MODELS:
                await management.create_price(model=demo, input_micros=0, output_micros=0)
    model = MODELS[0] if demo_model else "gpt-4o-mini"
    if not demo_model:
        print(
            "\nOnly models with a price are served. Set one before calling, e.g.\n"
            f"  CLAUDEOPUS_CONTROL={control_target} CLAUDEOPUS_ADMIN_KEY=<the admin management key> "
            f"claudeopus admin prices create --model {model} --input 150000 --output 600000\n",
            flush=True,
        )
    base = f"{_scheme(edge)}://{edge.http_address}/v1"
    text = (
        "First start: bootstrapped the admin and a demo user. These secrets are shown ONCE.\n"
        f"  admin management key : {admin.key.secret}\n"
        f"  demo API key         : {created.secret}\n\n"
        "Try it:\n"
        f"  curl {base}/chat/completions \\\n"
        f"    -H 'Authorization: Bearer {created.secret}' -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n\n'
        "  python -c 'from openai import OpenAI; "
        f'c = OpenAI(base_url="{base}", api_key="{created.secret}"); '
        f'print(c.chat.completions.create(model="{model}", '
        'messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)\'\n\n'
        "Manage accounts and keys:\n"
        f"  CLAUDEOPUS_CONTROL={control_target} CLAUDEOPUS_ADMIN_KEY={admin.key.secret} claudeopus admin usage list\n"
    )
    if sys.stdout.isatty():
        print("\n" + text, flush=True)
        return
    path = await asyncio.to_thread(_save_first_start, text)
    print(
        "\nFirst start: bootstrapped the admin and a demo user. stdout is not a terminal, so the secrets\n"
        f"(shown once) and how to use them are in {path} (readable only by you): read it, then delete it.\n",
        flush=True,
    )


def _save_first_start(text: str) -> Path:
    path = Path(FIRST_START_FILE).absolute()
    write_private(path, text)
    return path
