"""Shared fixtures. Databases follow CLAUDEOPUS_TEST_DATABASE (see tests/support/databases.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import admin
from tests.support.databases import copy_of, fresh_database, migrated_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.prices import serve_fake_models
from tests.support.processes import UPSTREAM_KEY, Gateway, start_control, start_edge


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database migrated once per session; tests get copies of it, never it."""
    with migrated_database(tmp_path_factory.mktemp("template")) as url:
        yield url


@pytest.fixture
def database_url(tmp_path: Path, migrated_template: str) -> Iterator[str]:
    """A fresh database of this test's own, with every migration applied."""
    with copy_of(migrated_template, tmp_path) as url:
        yield url


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh database without any table, for tests of the migrations themselves."""
    with fresh_database(tmp_path) as url:
        yield url


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
