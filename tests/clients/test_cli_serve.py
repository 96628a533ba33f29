"""``claudeopus serve`` (and the server commands' start-up errors) end to end, as real processes.

``serve`` always runs on its default database, ``sqlite://./claudeopus.db``, in a
temporary working directory: that default is part of what is tested.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from claudeopus.v1 import accounts_pb2, accounts_pb2_grpc
from tests.support.cli import SECRET_PATTERN, TIMEOUT, Result, clean_env, run_cli
from tests.support.processes import CLI, free_port

DEMO_MODEL = "demo-small"
DEMO_GREETING = "Hello from the ClaudeOpus demo upstream."
SERVICE_TOKEN = "t" * 40


def _two_ports() -> tuple[int, int]:
    first = free_port()
    while (second := free_port()) == first:
        pass
    return first, second


def _wait(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], describe: Callable[[], str]) -> None:
    """Poll ``ready()`` until true; fail at once if the process exits, and after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"serve exited ({process.returncode}) while waiting for {what}\n{describe()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{describe()}")
        time.sleep(0.1)


@dataclass
class Served:
    """One ``claudeopus serve`` process; output goes to files outside its working directory."""

    cwd: Path
    log_dir: Path
    name: str
    http_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    exit_seconds: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the clean environment

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    @property
    def control_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stdout(self) -> str:
        return (self.log_dir / f"{self.name}.stdout").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.log_dir / f"{self.name}.stderr").read_text(errors="replace")

    def describe(self) -> str:
        return f"--- stdout\n{self.stdout()}\n--- stderr\n{self.stderr()}"

    def first_start(self) -> str:
        """The secrets and examples of the first start: stdout is a file here, so they went to a 0600 file."""
        return (self.cwd / "claudeopus-first-start.txt").read_text()

    def start(self) -> Served:
        self.http_port, self.grpc_port = _two_ports()
        args = [CLI, "serve", "--http", f"127.0.0.1:{self.http_port}", "--grpc", self.control_target]
        env = {**clean_env(), **self.env}  # above all: no CLAUDEOPUS_UPSTREAM_URL, no CLAUDEOPUS_DATABASE_URL
        out = (self.log_dir / f"{self.name}.stdout").open("wb")
        err = (self.log_dir / f"{self.name}.stderr").open("wb")
        with out, err:
            self.process = subprocess.Popen(
                args, env=env, cwd=self.cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        _wait("HTTP on the edge port", self._answers_http, self.process, self.describe)
        # The first-start bootstrap runs after the edge listens; "ready" is logged once it is done.
        _wait("the ready line", lambda: "ClaudeOpus ready" in self.stderr(), self.process, self.describe)
        return self

    def _answers_http(self) -> bool:
        try:
            httpx.get(f"{self.edge_url}/models", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); kill only as a last resort. Idempotent."""
        if self.process is None:
            return -1
        if self.process.poll() is None:
            began = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.exit_seconds = time.monotonic() - began
        return self.process.returncode


@dataclass
class FirstStart:
    served: Served
    admin_key: str
    demo_key: str
    racer_answers: list[str] = field(default_factory=list)


def _printed_key(stdout: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s*:\s*(\S+)\s*$", stdout, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{stdout}"
    return match.group(1)


def _keys(served: Served) -> FirstStart:
    text = served.first_start()
    return FirstStart(served, _printed_key(text, "admin management key"), _printed_key(text, "demo API key"))


class BootstrapRacer:
    """Another local process calling BootstrapAdmin in a loop while ``serve`` starts: it must never win."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BootstrapRacer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(TIMEOUT)  # serve listens by now: the racer has its answer
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.served.grpc_port:
            time.sleep(0.001)
        request = accounts_pb2.BootstrapAdminRequest(email="attacker@example.com")
        # Retry connecting every few milliseconds (gRPC's default back-off would wait seconds).
        options = [("grpc.initial_reconnect_backoff_ms", 5), ("grpc.max_reconnect_backoff_ms", 20)]
        with grpc.insecure_channel(self.served.control_target, options=options) as channel:
            stub = accounts_pb2_grpc.AccountServiceStub(channel)
            while not self._stop.is_set():
                try:
                    reply = stub.BootstrapAdmin(request, timeout=2)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.005)  # not listening yet
                        continue
                    self.answers.append(error.code().name)
                else:
                    self.answers.append(f"WON {reply.account.email}")
                return


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstStart]:
    cwd, log_dir = tmp_path_factory.mktemp("serve-cwd"), tmp_path_factory.mktemp("serve-logs")
    served = Served(cwd, log_dir, "serve")
    try:
        with BootstrapRacer(served) as racer:
            served.start()
        first = _keys(served)
        first.racer_answers = racer.answers
        yield first
    finally:
        served.stop()


def _openai(served: Served, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.edge_url, api_key=key, max_retries=0, timeout=30)


def _usage(first: FirstStart, key: str | None = None) -> Result:
    return run_cli(
        ["admin", "usage", "list", "--json", "--control", first.served.control_target, "--key", key or first.admin_key]
    )


def _wait_for_records(first: FirstStart, count: int) -> list[dict[str, Any]]:
    """Poll until exactly ``count`` usage records exist and all are settled."""
    deadline = time.monotonic() + 15
    while True:
        rows = _usage(first).ok().json()["usage_records"]
        settled = [r for r in rows if r["status"] != "USAGE_STATUS_RESERVED"]
        if len(settled) >= count or time.monotonic() > deadline:
            assert len(rows) == len(settled) == count, rows
            return rows
        time.sleep(0.1)


# -- first start ------------------------------------------------------------------------------


def test_no_upstream_means_a_loud_demo_banner(first: FirstStart) -> None:
    stderr = first.served.stderr()
    assert "NO UPSTREAM CONFIGURED" in stderr, first.served.describe()
    assert "DEMO upstream" in stderr
    assert "=" * 78 in stderr, "the banner is framed so it stands out in the log"
    match = re.search(r"DEMO upstream at (http://\S+)", stderr)
    assert match and match.group(1).startswith("http://127.0.0.1:"), "the demo upstream listens on loopback only"
    assert "CLAUDEOPUS_UPSTREAM_URL" in stderr, "the banner says how to configure a real upstream"


def test_first_start_writes_both_keys_once_to_a_private_file_and_creates_the_database(first: FirstStart) -> None:
    stdout = first.served.stdout()
    assert re.fullmatch(SECRET_PATTERN, first.admin_key), first.admin_key
    assert re.fullmatch(SECRET_PATTERN, first.demo_key), first.demo_key
    assert first.admin_key != first.demo_key
    # stdout is not a terminal here (a service manager would collect it): the secrets are not on it,
    # but in an owner-only file whose path it prints.
    secrets_file = first.served.cwd / "claudeopus-first-start.txt"
    assert str(secrets_file) in stdout and "sk-co-" not in stdout
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert "shown ONCE" in first.served.first_start()
    database = first.served.cwd / "claudeopus.db"
    assert database.is_file(), "the default database is ./claudeopus.db"
    assert database.stat().st_mode & 0o777 == 0o600, "the database holds account data: owner-only"
    assert not (first.served.log_dir / "claudeopus.db").exists()
    # Neither secret is logged.
    assert first.admin_key not in first.served.stderr()
    assert first.demo_key not in first.served.stderr()


def test_no_other_process_can_bootstrap_while_serve_starts(first: FirstStart) -> None:
    """serve makes its admin before the gRPC port listens: a racing BootstrapAdmin's first answer is a refusal."""
    assert first.racer_answers == ["ALREADY_EXISTS"], first.racer_answers


def test_printed_curl_example_works(first: FirstStart) -> None:
    stdout = first.served.first_start()
    joined = stdout.replace("\\\n", " ")
    [line] = [candidate.strip() for candidate in joined.splitlines() if candidate.strip().startswith("curl ")]
    argv = shlex.split(line)
    assert argv[:2] == ["curl", f"{first.served.edge_url}/chat/completions"], argv
    headers: dict[str, str] = {}
    data = None
    rest = iter(argv[2:])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, header_value = value.partition(": ")
            headers[name] = header_value
        else:
            assert flag == "-d", argv
            data = value
    assert headers == {"Authorization": f"Bearer {first.demo_key}", "Content-Type": "application/json"}
    assert data is not None and f'"model": "{DEMO_MODEL}"' in data
    response = httpx.post(argv[1], headers=headers, content=data, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith(DEMO_GREETING)


def test_printed_python_example_works(first: FirstStart) -> None:
    [line] = [candidate.strip() for candidate in first.served.first_start().splitlines() if "python -c" in candidate]
    argv = shlex.split(line)
    assert argv[:2] == ["python", "-c"], argv
    done = subprocess.run(
        [sys.executable, *argv[1:]], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(DEMO_GREETING), done.stdout


def test_demo_key_works_with_the_openai_sdk_and_is_billed(first: FirstStart) -> None:
    client = _openai(first.served, first.demo_key)
    before = len(_usage(first).ok().json()["usage_records"])

    reply = client.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "Hello"}])
    text = reply.choices[0].message.content
    assert text is not None and text.startswith(DEMO_GREETING)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == len(text.split())

    stream = client.chat.completions.create(
        model=DEMO_MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.split() == text.split()[:3]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    [usage_chunk] = [c for c in chunks if c.usage is not None]
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == 3

    records = _wait_for_records(first, before + 2)
    newest, previous = records[0], records[1]  # newest first
    for record in (newest, previous):
        assert record["model"] == DEMO_MODEL
        assert record["status"] == "USAGE_STATUS_SUCCEEDED"
        assert record["source"] == "USAGE_SOURCE_REPORTED"
    assert newest["api_key"] == previous["api_key"]
    assert int(newest["output_tokens"]) == 3
    assert int(newest["input_tokens"]) == usage_chunk.usage.prompt_tokens
    assert (int(previous["input_tokens"]), int(previous["output_tokens"])) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )


def test_demo_key_cannot_manage(first: FirstStart) -> None:
    result = _usage(first, first.demo_key)
    assert result.returncode == 1, result.describe()
    assert result.json()["error"]["reason"] == "KEY_SCOPE_DENIED"


def test_printed_management_command_works(first: FirstStart) -> None:
    [line] = [c.strip() for c in first.served.first_start().splitlines() if "claudeopus admin" in c]
    argv = shlex.split(line)
    env = {}
    while "=" in argv[0]:
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    assert argv[0] == "claudeopus", argv
    assert env["CLAUDEOPUS_ADMIN_KEY"] == first.admin_key
    assert set(env) == {"CLAUDEOPUS_ADMIN_KEY", "CLAUDEOPUS_CONTROL"}
    result = run_cli([*argv[1:], "--json"], env=env)
    assert result.returncode == 0, result.describe()
    assert "usage_records" in result.json()


# -- stop and restart -------------------------------------------------------------------------


def test_sigterm_exits_0_and_a_restart_keeps_the_installation(tmp_path: Path) -> None:
    cwd, log_dir = tmp_path / "work", tmp_path / "logs"
    cwd.mkdir()
    log_dir.mkdir()
    served = Served(cwd, log_dir, "first")
    again = Served(cwd, log_dir, "second")
    try:
        initial = _keys(served.start())
        assert served.stop() == 0, served.describe()
        assert served.exit_seconds is not None and served.exit_seconds < 10
        assert "ClaudeOpus stopped" in served.stderr()
        database = cwd / "claudeopus.db"
        assert database.is_file()
        secrets_key = cwd / "claudeopus-secrets.key"  # seals upstream credentials: made once, owner-only
        assert secrets_key.stat().st_mode & 0o777 == 0o600
        made = secrets_key.read_text()

        again.start()
        assert secrets_key.read_text() == made, "a restart must keep the key its credentials were sealed with"
        assert "sk-co-" not in again.stdout(), "a restart must not print (new) keys"
        assert "First start" not in again.stdout()
        assert "admin already bootstrapped" in again.stderr(), again.describe()
        assert "NO UPSTREAM CONFIGURED" in again.stderr()

        reply = _openai(again, initial.demo_key).chat.completions.create(
            model=DEMO_MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=2
        )
        assert reply.choices[0].message.content == " ".join(DEMO_GREETING.split()[:2])
        restarted = FirstStart(again, initial.admin_key, initial.demo_key)
        _wait_for_records(restarted, 1)  # the old admin key still manages the same database
        assert again.stop() == 0, again.describe()
        assert again.exit_seconds is not None and again.exit_seconds < 10
    finally:
        again.stop()
        served.stop()


def test_edge_workers_share_the_port_bill_every_request_and_stop_on_sigterm(tmp_path: Path) -> None:
    cwd, log_dir = tmp_path / "work", tmp_path / "logs"
    cwd.mkdir()
    log_dir.mkdir()
    served = Served(cwd, log_dir, "workers", env={"CLAUDEOPUS_WORKERS": "2"})
    try:
        first = _keys(served.start())
        # A new connection per request: the kernel hands them to either worker.
        for index in range(6):
            reply = _openai(served, first.demo_key).chat.completions.create(
                model=DEMO_MODEL, messages=[{"role": "user", "content": f"hello {index}"}], max_tokens=2
            )
            assert reply.choices[0].message.content == " ".join(DEMO_GREETING.split()[:2])
        _wait_for_records(first, 6)
        assert served.process is not None
        workers = _edge_workers(served.process.pid)
        assert len(workers) == 2, workers
        assert served.stop() == 0, served.describe()
        assert served.exit_seconds is not None and served.exit_seconds < 10
        assert "ClaudeOpus stopped" in served.stderr()
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "every worker stopped with serve"
        assert first.admin_key not in served.stderr() and first.demo_key not in served.stderr()
    finally:
        served.stop()


def _edge_workers(pid: int) -> list[int]:
    """The worker processes ``serve`` (``pid``) spawned (not multiprocessing's resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


# -- start-up errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "too-short"], ids=["unset", "short"])
def test_control_without_a_service_token_exits_2(tmp_path: Path, token: str | None) -> None:
    env = {} if token is None else {"CLAUDEOPUS_SERVICE_TOKEN": token}
    result = run_cli(["control", "--grpc", f"127.0.0.1:{free_port()}"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "CLAUDEOPUS_SERVICE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == [], "nothing (no database) is created before the settings are valid"


def test_edge_without_a_service_token_exits_2(tmp_path: Path) -> None:
    args = ["edge", "--http", f"127.0.0.1:{free_port()}", "--upstream-url", "http://127.0.0.1:9/v1"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "CLAUDEOPUS_SERVICE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_a_malformed_http_address_is_a_clean_error(tmp_path: Path) -> None:
    result = run_cli(["serve", "--http", "nonsense", "--grpc", f"127.0.0.1:{free_port()}"], cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr, result.describe()


@pytest.mark.parametrize(
    ("name", "value"), [("CLAUDEOPUS_RESERVATION_TIMEOUT", "soon"), ("CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS", "m=x")]
)
def test_serve_with_a_bad_reservation_setting_is_a_clean_error(tmp_path: Path, name: str, value: str) -> None:
    result = run_cli(["serve", "--grpc", f"127.0.0.1:{free_port()}"], env={name: value}, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert name in result.stderr
    assert "Traceback" not in result.stderr, result.describe()
    assert list(tmp_path.iterdir()) == [], "nothing (no database) is created before the settings are valid"


def test_serve_with_a_busy_http_port_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = run_cli(["serve", "--http", f"127.0.0.1:{busy}", "--grpc", f"127.0.0.1:{free_port()}"], cwd=tmp_path)
        with_workers = run_cli(
            ["serve", "--http", f"127.0.0.1:{busy}", "--grpc", f"127.0.0.1:{free_port()}"],
            env={"CLAUDEOPUS_WORKERS": "1"},
            cwd=tmp_path / "workers",
        )
    assert with_workers.returncode != 0, with_workers.describe()
    assert str(busy) in with_workers.stderr
    assert "Traceback" not in with_workers.stderr, with_workers.describe()
    assert result.returncode != 0, result.describe()
    assert str(busy) in result.stderr
    assert "Traceback" not in result.stderr, result.describe()


def test_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    env = {"CLAUDEOPUS_SERVICE_TOKEN": SERVICE_TOKEN}
    result = run_cli(
        ["control", "--grpc", f"127.0.0.1:{free_port()}", "--log-level", "bogus"], env=env, cwd=tmp_path, timeout=15
    )
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert "log" in result.stderr.lower()
