"""The server commands' bodies: control, edge, and both together with a demo upstream."""

from __future__ import annotations

import asyncio
import logging
import sys
import urllib.parse
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from claudeopus.cli.secrets_key import with_secrets_key
from claudeopus.cli.settings import ServeSettings
from claudeopus.cli.workers import EdgeWorkers
from claudeopus.client import ClaudeOpusClient
from claudeopus.control.domain.accounts import Bootstrapped
from claudeopus.control.server import ControlServer
from claudeopus.control.settings import ControlSettings
from claudeopus.edge import https
from claudeopus.edge.app import build_app
from claudeopus.edge.demo import MODELS, DemoUpstream
from claudeopus.edge.server import HttpServer
from claudeopus.edge.settings import EdgeSettings
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


async def run_serve(settings: ServeSettings, stop: asyncio.Event) -> None:
    """Control and edge in one process; a demo upstream when none is configured."""
    async with AsyncExitStack() as stack:
        # The admin is made before the gRPC port listens: no other process can bootstrap first.
        control_settings = with_secrets_key(settings.control, Path.cwd())
        control = await stack.enter_async_context(
            ControlServer(control_settings, bootstrap_as=(ADMIN_EMAIL, "Administrator"))
        )
        if settings.demo_upstream:
            demo = await stack.enter_async_context(HttpServer(DemoUpstream(), "127.0.0.1", 0))
            settings = settings.with_upstream(f"http://127.0.0.1:{demo.port}/v1")
            _banner_demo(settings.edge.upstream_url)
        edge = settings.edge
        if settings.workers:
            workers = EdgeWorkers(edge, settings.workers, settings.log_level, _https(edge))
            await stack.enter_async_context(workers)
        else:
            await stack.enter_async_context(HttpServer(build_app(edge), edge.http_host, edge.http_port, **_https(edge)))
        if control.bootstrapped is None:
            _log.info("existing installation: admin already bootstrapped (keys are shown only once)")
        else:
            await _first_start(control.bootstrapped, edge, demo_model=settings.demo_upstream)
        _log.info(
            "ClaudeOpus ready: edge %s://%s, control %s",
            _scheme(edge),
            edge.http_address,
            settings.control.grpc_address,
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


async def _first_start(admin: Bootstrapped, edge: EdgeSettings, *, demo_model: bool) -> None:
    """On the very first start (the admin was just bootstrapped): a demo user and its key, and how to call.

    The secrets are printed when stdout is a terminal; otherwise (a service manager, a log
    collector) they go to ``claudeopus-first-start.txt`` (0600) and only its path is printed.
    """
    control_target = edge.control_target
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
