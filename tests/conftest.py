"""Shared fixtures. Databases follow CLAUDEOPUS_TEST_DATABASE (see tests/support/databases.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import admin
from tests.support.databases import fresh_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.prices import serve_fake_models
from tests.support.processes import Process, start_control, start_edge

UPSTREAM_KEY = "upstream-secret-" + "k" * 24


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database(tmp_path) as url:
        yield url


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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("gateway")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        control, control_port = start_control(url, token, log_dir)
        processes = [control]
        try:
            edge, edge_port = start_edge(control_port, upstream_server.url, token, log_dir, upstream_key=UPSTREAM_KEY)
            processes.append(edge)
            target = f"127.0.0.1:{control_port}"
            boot = admin.bootstrap(target, log_dir)
            serve_fake_models(target, boot.secret)  # only priced models are served
            yield Gateway(
                database_url=url,
                control_target=target,
                edge_url=f"http://127.0.0.1:{edge_port}/v1",
                admin_key=boot.secret,
                upstream=upstream,
                processes=processes,
            )
        finally:
            for process in reversed(processes):
                process.stop()
