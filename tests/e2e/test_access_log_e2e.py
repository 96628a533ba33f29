"""The access log of a real ``claudeopus edge`` process: one line per request, nothing from inside it."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import admin
from tests.support.databases import fresh_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.prices import serve_fake_models
from tests.support.processes import CLI, UPSTREAM_KEY, Gateway, Process, start_control, start_edge

LINE = re.compile(
    r"(?P<ip>\S+) (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<status>\d{3}|-) (?P<path>/\S*|\(unmatched\)) "
    r"(?P<latency>\d+\.\d{3}) (?P<request_id>\S+)"
)
PROBE = ("/v1/models", "401", "-")  # what start_edge's readiness probe leaves behind


class Edge:
    def __init__(self, gateway: Gateway, process: Process, log_dir: Path, token: str) -> None:
        self.gateway = gateway
        self.process = process
        self.access_log = log_dir / "logs" / "access.log"  # the default, relative to the working directory
        self.token = token

    def lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    log_dir = tmp_path_factory.mktemp("access-log")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        control, control_port = start_control(url, token, log_dir)
        processes = [control]
        try:
            process, edge_port = start_edge(
                control_port,
                upstream_server.url,
                token,
                log_dir,
                upstream_key=UPSTREAM_KEY,
                env={"CLAUDEOPUS_ACCESS_LOG_STDOUT": "1", "CLAUDEOPUS_ACCESS_LOG_KEEP": "2"},
            )
            processes.append(process)
            target = f"127.0.0.1:{control_port}"
            boot = admin.bootstrap(target, log_dir)
            serve_fake_models(target, boot.secret)  # only priced models are served
            gateway = Gateway(
                database_url=url,
                control_target=target,
                edge_url=f"http://127.0.0.1:{edge_port}",
                admin_key=boot.secret,
                upstream=upstream,
                processes=processes,
            )
            yield Edge(gateway, process, log_dir, token)
        finally:
            for started in reversed(processes):
                started.stop()


def wait_for_lines(edge: Edge, count: int, timeout: float = 10.0) -> list[str]:
    """A line is written once the response is complete, so just after the client has read it."""
    deadline = time.monotonic() + timeout
    while len(lines := edge.lines()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def test_one_line_per_request_with_status_and_request_id_and_nothing_else(edge: Edge) -> None:
    _, secret = edge.gateway.new_user_key()
    canary = f"CANARY-{uuid.uuid4().hex}"
    before = len(edge.lines())
    body = {"model": "fake-1", "messages": [{"role": "system", "content": canary}, {"role": "user", "content": canary}]}
    auth = {"authorization": f"Bearer {secret}"}
    expected: list[tuple[str, str, str]] = []
    with httpx.Client(base_url=edge.gateway.edge_url, timeout=30) as client:
        reply = client.post(f"/v1/chat/completions?user={canary}", json={**body, "max_tokens": 3}, headers=auth)
        assert reply.status_code == 200 and canary in reply.text
        expected.append(("/v1/chat/completions", "200", reply.headers["x-request-id"]))

        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=auth) as stream:
            assert canary in stream.read().decode()
        expected.append(("/v1/chat/completions", "200", stream.headers["x-request-id"]))

        failed = client.post("/v1/chat/completions", json={**body, "model": "fake-status-500"}, headers=auth)
        assert failed.status_code == 502
        expected.append(("/v1/chat/completions", "502", failed.headers["x-request-id"]))

        refused = client.post(f"/v1/chat/completions?key={canary}", json=body)
        assert refused.status_code == 401 and "x-request-id" not in refused.headers
        expected.append(("/v1/chat/completions", "401", "-"))

        listed = client.get("/v1/models", headers={**auth, "x-forwarded-host": canary})
        assert listed.status_code == 200
        expected.append(("/v1/models", "200", "-"))

        unknown = client.get(f"/v1/unknown/{canary}?{canary}")
        assert unknown.status_code == 404
        expected.append(("(unmatched)", "404", "-"))

    lines = wait_for_lines(edge, before + len(expected))
    fields = [LINE.fullmatch(line) for line in lines]
    assert all(fields), lines
    seen = [(m["path"], m["status"], m["request_id"]) for m in fields if m]
    assert seen[before:] == expected, "one line per request, in order, with its status and request id"
    assert all(entry == PROBE for entry in seen[:before])
    assert all(m["ip"] == "127.0.0.1" and float(m["latency"]) > 0 for m in fields if m)

    logged = edge.access_log.read_text()
    for forbidden in (canary, secret, UPSTREAM_KEY, edge.token, "fake-", "?", "Bearer", "content"):
        assert forbidden not in logged
    stdout = edge.process.stdout_path.read_text()
    assert stdout.splitlines() == lines, "stdout gets the same lines, and nothing else"
    stderr = edge.process.stderr_path.read_text()
    assert not any(line in stderr for line in lines), "the application log stays separate"
    assert canary not in stderr
    assert edge.access_log.stat().st_mode & 0o777 == 0o600, "the edge's log file is private"


def test_bad_access_log_settings_stop_the_edge_with_one_line(tmp_path: Path) -> None:
    env = {"CLAUDEOPUS_SERVICE_TOKEN": "t" * 40, "CLAUDEOPUS_ACCESS_LOG_ROTATE": "1 hour", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [CLI, "edge", "--upstream-url", "http://127.0.0.1:9/v1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "claudeopus: CLAUDEOPUS_ACCESS_LOG_ROTATE must be a window from 1s to 366d like 30s, 10m, 1h or 1d, "
        "got '1 hour'"
    ]
    assert not (tmp_path / "logs").exists()
