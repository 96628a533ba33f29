"""The access log: the exact line, nothing from inside a request, streams, failures, rotation and retention."""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from claudeopus.edge.access_log import AccessLog, AccessLogMiddleware, access_line
from claudeopus.edge.app import build_app
from claudeopus.edge.routes import ROUTES
from claudeopus.edge.server import HttpServer
from claudeopus.edge.settings import EdgeSettings
from claudeopus.settings import SettingsError
from tests.support.fake_control import FakeControl
from tests.support.fake_upstream import FakeUpstream, ThreadedServer

TOKEN = "t" * 40
LINE = re.compile(
    r"(?P<ip>\S+) (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<status>\d{3}|-) (?P<path>/\S*|\(unmatched\)) "
    r"(?P<latency>\d+\.\d{3}) (?P<request_id>\S+)"
)


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.ticks = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.ticks += seconds


class Lines(list[str]):
    def write(self, line: str) -> None:
        self.append(line)


def http_scope(
    path: str = "/v1/chat/completions", *, raw_path: bytes | None = None, query: bytes = b"", **extra: Any
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode() if raw_path is None else raw_path,
        "query_string": query,
        "headers": [],
        "client": ("203.0.113.7", 51234),
    }
    scope.update(extra)
    return scope


async def drive(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def answering(status: int, *chunks: bytes, request_id: str | None = None, clock: FakeClock | None = None) -> Any:
    """An ASGI app that answers ``status`` with ``chunks``, the clock moving 1 ms per chunk."""
    headers = [(b"content-type", b"application/json")]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        parts = chunks or (b"",)
        for index, chunk in enumerate(parts):
            if clock is not None:
                clock.advance(0.001)
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(parts) - 1})

    return app


# The line


async def test_a_line_is_exactly_ip_time_status_path_latency_request_id() -> None:
    clock = FakeClock(at(2030, 1, 2, 3, 4, 5, 678000))
    lines = Lines()
    request_id = "0b5e1c52-6a3f-4f0e-9c1d-2a7b8e9f0a11"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.0125)
        await answering(200, b"{}", request_id=request_id)(scope, receive, send)

    middleware = AccessLogMiddleware(app, lines, routes=ROUTES, wall=clock.wall, monotonic=clock.monotonic)
    await drive(middleware, http_scope())

    assert lines == [f"203.0.113.7 2030-01-02T03:04:05.678Z 200 /v1/chat/completions 12.500 {request_id}"]


async def test_a_request_refused_before_authorize_has_no_request_id() -> None:
    clock = FakeClock(at(2030, 1, 2))
    lines = Lines()
    middleware = AccessLogMiddleware(
        answering(401, b"{}"), lines, routes=ROUTES, wall=clock.wall, monotonic=clock.monotonic
    )
    await drive(middleware, http_scope("/v1/models", client=None))
    assert lines == ["- 2030-01-02T00:00:00.000Z 401 /v1/models 0.000 -"]


async def test_query_string_headers_and_body_never_reach_the_line() -> None:
    canary = f"CANARY-{secrets.token_hex(8)}"
    secret = "sk-co-" + secrets.token_urlsafe(32)
    lines = Lines()
    scope = http_scope(
        query=f"api_key={canary}&q=1".encode(),
        headers=[(b"authorization", f"Bearer {secret}".encode()), (b"x-canary", canary.encode())],
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body is the app's business, not the log's
        await answering(200, orjson.dumps({"echo": canary}), request_id="r-1")(scope, receive, send)

    await drive(AccessLogMiddleware(app, lines, routes=ROUTES), scope)

    [line] = lines
    fields = LINE.fullmatch(line)
    assert fields is not None, line
    assert fields["path"] == "/v1/chat/completions" and fields["request_id"] == "r-1"
    assert len(line.split(" ")) == 6
    for forbidden in (canary, secret, "api_key", "?", "Bearer", "POST"):
        assert forbidden not in line


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models/", "/v1/models"),
        ("/openapi.json", "/openapi.json"),
        ("/v1/a b\r\nforged 200 line\x00\xff", "(unmatched)"),
        ("/v1/models/sk-co-secretsecret", "(unmatched)"),
        ("/v1/chat/completions/../../etc", "(unmatched)"),
        ("/" + "a" * 10_000, "(unmatched)"),
        ("", "(unmatched)"),
    ],
)
async def test_a_request_is_logged_by_the_route_it_matched_never_by_its_path(path: str, logged: str) -> None:
    """Anything a client writes in a URL it may put a secret in: only the edge's own templates are kept."""
    lines = Lines()
    await drive(AccessLogMiddleware(answering(404), lines, routes=ROUTES), http_scope(path))
    [line] = lines
    assert line.split(" ")[3] == logged
    assert "\n" not in line and "\r" not in line and "secret" not in line and len(line.split(" ")) == 6


async def test_an_odd_request_id_header_is_not_copied() -> None:
    lines = Lines()
    await drive(AccessLogMiddleware(answering(200, request_id="two words"), lines, routes=ROUTES), http_scope())
    assert lines[0].endswith(" -")


def test_access_line_rounds_to_milliseconds() -> None:
    line = access_line(
        client="::1", started_at=at(2030, 1, 2) + 0.9996, status=200, route="/v1/models", latency=0.0004996,
        request_id=None,
    )  # fmt: skip
    assert line == "::1 2030-01-02T00:00:01.000Z 200 /v1/models 0.500 -"


# Streams, failures, disconnects


async def test_a_stream_is_logged_once_after_its_last_chunk() -> None:
    clock = FakeClock(at(2030, 1, 2))
    lines = Lines()
    seen_while_streaming: list[int] = []

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"s-1")]})
        for _ in range(3):
            clock.advance(1.0)
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            seen_while_streaming.append(len(lines))
        clock.advance(0.25)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        clock.advance(5.0)  # work after the last byte (settling) is not the client's latency

    middleware = AccessLogMiddleware(stream, lines, routes=ROUTES, wall=clock.wall, monotonic=clock.monotonic)
    await drive(middleware, http_scope())

    assert seen_while_streaming == [0, 0, 0]
    assert lines == ["203.0.113.7 2030-01-02T00:00:00.000Z 200 /v1/chat/completions 3250.000 s-1"]


async def test_a_client_that_leaves_mid_stream_gives_one_line_with_what_was_sent() -> None:
    clock = FakeClock(at(2030, 1, 2))
    lines = Lines()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"s-2")]})
        clock.advance(0.5)
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        clock.advance(0.5)
        # the client is gone: the relay stops without a final chunk

    middleware = AccessLogMiddleware(stream, lines, routes=ROUTES, wall=clock.wall, monotonic=clock.monotonic)
    await drive(middleware, http_scope())
    assert lines == ["203.0.113.7 2030-01-02T00:00:00.000Z 200 /v1/chat/completions 1000.000 s-2"]


async def test_a_failing_send_is_the_servers_business_and_still_logged_once() -> None:
    lines = Lines()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(OSError, match="connection reset"):
        await AccessLogMiddleware(answering(200, b"a", b"b"), lines, routes=ROUTES)(http_scope(), receive, send)
    assert len(lines) == 1 and lines[0].split(" ")[2] == "200"


async def test_an_app_failing_before_answering_is_logged_as_500_and_still_raises() -> None:
    lines = Lines()

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await drive(AccessLogMiddleware(broken, lines, routes=ROUTES), http_scope())
    assert [line.split(" ")[2] for line in lines] == ["500"]


async def test_an_app_failing_mid_stream_is_logged_with_the_status_it_sent() -> None:
    lines = Lines()

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await drive(AccessLogMiddleware(broken, lines, routes=ROUTES), http_scope())
    assert [line.split(" ")[2] for line in lines] == ["200"]


async def test_a_request_cancelled_before_answering_logs_no_status() -> None:
    lines = Lines()

    async def cancelled(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await drive(AccessLogMiddleware(cancelled, lines, routes=ROUTES), http_scope())
    assert [line.split(" ")[2] for line in lines] == ["-"]


async def test_a_broken_log_never_breaks_a_request() -> None:
    class Broken:
        def write(self, line: str) -> None:
            raise OSError("disk full")

    sent = await drive(AccessLogMiddleware(answering(200, b"a", b"b"), Broken(), routes=ROUTES), http_scope())
    assert [m.get("body") for m in sent] == [None, b"a", b"b"]


async def test_lifespan_and_other_scopes_pass_through_unlogged() -> None:
    lines = Lines()
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    await AccessLogMiddleware(app, lines, routes=ROUTES)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert called == ["lifespan"] and lines == []


# Where lines go


def test_lines_go_to_stdout_when_asked_and_never_to_the_application_loggers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    stream = io.StringIO()
    log = AccessLog(tmp_path / "access.log", stdout=True, stream=stream)
    with log.opened():
        log.write("one line")
    assert stream.getvalue() == "one line\n"
    assert (tmp_path / "access.log").read_text() == "one line\n"
    assert "one line" not in caplog.text


def test_outside_the_lifespan_nothing_is_held_and_nothing_written(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "logs" / "access.log")
    log.write("before")
    with log.opened():
        log.write("during")
    log.write("after")
    assert (tmp_path / "logs" / "access.log").read_text() == "during\n"
    assert not AccessLog(None).enabled


def test_the_logger_is_private_to_each_access_log(tmp_path: Path) -> None:
    first, second = AccessLog(tmp_path / "a.log"), AccessLog(tmp_path / "b.log")
    with first.opened(), second.opened():
        first.write("a")
        second.write("b")
    assert (tmp_path / "a.log").read_text() == "a\n"
    assert (tmp_path / "b.log").read_text() == "b\n"


# Rotation and retention


@pytest.mark.parametrize(
    ("window", "suffix"),
    [(1, "%Y-%m-%d_%H-%M-%S"), (600, "%Y-%m-%d_%H-%M"), (3600, "%Y-%m-%d_%H"), (86400, "%Y-%m-%d")],
)
def test_after_n_rotations_only_keep_rotated_files_remain(tmp_path: Path, window: int, suffix: str) -> None:
    start = at(2030, 1, 2)
    clock = FakeClock(start + window / 2)
    keep, windows = 3, 8
    log = AccessLog(tmp_path / "logs" / "access.log", rotate_seconds=window, keep=keep, clock=clock.wall)
    with log.opened():
        for index in range(windows):
            log.write(f"line {index}")
            clock.advance(window)

    def name(index: int) -> str:
        return "access.log." + time.strftime(suffix, time.gmtime(start + index * window))

    kept = [name(index) for index in range(windows - 1 - keep, windows - 1)]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["access.log", *kept]
    for index in range(windows - 1 - keep, windows - 1):
        assert (tmp_path / "logs" / name(index)).read_text() == f"line {index}\n"
    assert (tmp_path / "logs" / "access.log").read_text() == f"line {windows - 1}\n"


def test_a_file_reaching_its_size_cap_is_rotated_early_and_the_oldest_parts_go_first(tmp_path: Path) -> None:
    clock = FakeClock(at(2030, 1, 2, 10, 0, 1))
    line = "x" * 99  # 100 bytes with its newline
    log = AccessLog(tmp_path / "access.log", rotate_seconds=3600, keep=3, max_bytes=250, clock=clock.wall)
    with log.opened():
        for index in range(7):  # two lines a file: parts of 200 bytes
            log.write(f"{index}{line[1:]}")
        clock.advance(3600)
        log.write("next window")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", *(f"access.log.2030-01-02_10.00000{n}" for n in (1, 2, 3))]
    assert all(p.stat().st_size <= 250 for p in tmp_path.iterdir())
    parts = [(tmp_path / name).read_text().split("\n")[0][0] for name in names[1:]]
    assert parts == ["2", "4", "6"], "the window's first part (lines 0 and 1) was the oldest: deleted first"
    assert (tmp_path / "access.log").read_text() == "next window\n"


def test_log_files_and_the_directories_made_for_them_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        log = AccessLog(tmp_path / "new" / "logs" / "access.log", max_bytes=4096, clock=FakeClock(at(2030, 1, 2)).wall)
        with log.opened():
            log.write("x" * 3000)
            log.write("y" * 3000)  # rotated: the next file is created too
    finally:
        os.umask(old)
    for directory in (tmp_path / "new", tmp_path / "new" / "logs"):
        assert directory.stat().st_mode & 0o777 == 0o700
    files = list((tmp_path / "new" / "logs").iterdir())
    assert len(files) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in files)


def test_windows_are_aligned_and_an_idle_file_keeps_its_own_windows_name(tmp_path: Path) -> None:
    clock = FakeClock(at(2030, 1, 2, 10, 59, 59))
    log = AccessLog(tmp_path / "access.log", rotate_seconds=3600, keep=24, clock=clock.wall)
    with log.opened():
        log.write("10:59:59")
        clock.advance(1)  # 11:00:00 starts a new window, on the hour
        log.write("11:00:00")
        clock.advance(5 * 3600)  # idle for five hours
        log.write("16:00:00")
    assert (tmp_path / "access.log.2030-01-02_10").read_text() == "10:59:59\n"
    assert (tmp_path / "access.log.2030-01-02_11").read_text() == "11:00:00\n"
    assert (tmp_path / "access.log").read_text() == "16:00:00\n"
    assert len(list(tmp_path.iterdir())) == 3


def test_a_restart_appends_in_the_same_window_and_rotates_an_older_file_under_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    clock = FakeClock(at(2030, 1, 2, 10, 15))
    with AccessLog(path, clock=clock.wall).opened() as log:
        log.write("first run")
    os.utime(path, (clock.now, clock.now))
    clock.advance(30 * 60)
    with AccessLog(path, clock=clock.wall).opened() as log:
        log.write("second run, same hour")
    assert path.read_text() == "first run\nsecond run, same hour\n"

    os.utime(path, (clock.now, clock.now))
    clock.advance(3 * 3600)
    with AccessLog(path, clock=clock.wall).opened() as log:
        log.write("third run, hours later")
    assert (tmp_path / "access.log.2030-01-02_10").read_text() == "first run\nsecond run, same hour\n"
    assert path.read_text() == "third run, hours later\n"


# Settings


def env(**variables: str) -> dict[str, str]:
    return {"CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1", "CLAUDEOPUS_SERVICE_TOKEN": TOKEN, **variables}


def test_from_the_environment_the_access_log_is_on_hourly_with_24_kept() -> None:
    settings = EdgeSettings.from_env(env())
    assert settings.access_log_path == "logs/access.log"
    assert (settings.access_log_rotate_seconds, settings.access_log_keep) == (3600, 24)
    assert settings.access_log_max_bytes == 64 * 1024 * 1024
    assert EdgeSettings.from_env(env(CLAUDEOPUS_ACCESS_LOG_MAX_BYTES="10000")).access_log_max_bytes == 10000
    assert settings.access_log_stdout is False
    assert EdgeSettings(upstream_url="http://x/v1", service_token=TOKEN).access_log_path is None


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CLAUDEOPUS_ACCESS_LOG": "off"}, (None, 3600, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG": "/var/log/co/a.log"}, ("/var/log/co/a.log", 3600, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_ROTATE": "30s"}, ("logs/access.log", 30, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_ROTATE": "10m"}, ("logs/access.log", 600, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_ROTATE": "2H"}, ("logs/access.log", 7200, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_ROTATE": "1d"}, ("logs/access.log", 86400, 24, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_KEEP": "7"}, ("logs/access.log", 3600, 7, False)),
        ({"CLAUDEOPUS_ACCESS_LOG_STDOUT": "1"}, ("logs/access.log", 3600, 24, True)),
        ({"CLAUDEOPUS_ACCESS_LOG_STDOUT": "0"}, ("logs/access.log", 3600, 24, False)),
    ],
)
def test_access_log_settings_are_read_once(variables: dict[str, str], expected: tuple[object, ...]) -> None:
    settings = EdgeSettings.from_env(env(**variables))
    assert (
        settings.access_log_path,
        settings.access_log_rotate_seconds,
        settings.access_log_keep,
        settings.access_log_stdout,
    ) == expected


def test_the_stdout_flag_wins_over_the_environment() -> None:
    assert EdgeSettings.from_env(env(CLAUDEOPUS_ACCESS_LOG_STDOUT="0"), access_log_stdout=True).access_log_stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "0m"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "1w"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "h"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "1.5h"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "-1h"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "3600"),
        ("CLAUDEOPUS_ACCESS_LOG_ROTATE", "367d"),
        ("CLAUDEOPUS_ACCESS_LOG_KEEP", "0"),
        ("CLAUDEOPUS_ACCESS_LOG_KEEP", "-3"),
        ("CLAUDEOPUS_ACCESS_LOG_KEEP", "ten"),
        ("CLAUDEOPUS_ACCESS_LOG_KEEP", "1000000"),
        ("CLAUDEOPUS_ACCESS_LOG_STDOUT", "maybe"),
        ("CLAUDEOPUS_ACCESS_LOG", "   "),
        ("CLAUDEOPUS_ACCESS_LOG_MAX_BYTES", "100"),
        ("CLAUDEOPUS_ACCESS_LOG_MAX_BYTES", "lots"),
        ("CLAUDEOPUS_MAX_CHOICES", "0"),
        ("CLAUDEOPUS_MAX_CHOICES", "129"),
    ],
)
def test_bad_access_log_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        EdgeSettings.from_env(env(**{name: value}))


def test_an_access_log_that_cannot_be_written_is_refused_before_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="CLAUDEOPUS_ACCESS_LOG cannot be created"):
        EdgeSettings.from_env(env(CLAUDEOPUS_ACCESS_LOG=str(tmp_path / "file" / "logs" / "access.log")))
    with pytest.raises(SettingsError, match="CLAUDEOPUS_ACCESS_LOG is a directory"):
        EdgeSettings.from_env(env(CLAUDEOPUS_ACCESS_LOG=str(tmp_path)))
    deep = tmp_path / "not" / "yet" / "access.log"
    assert EdgeSettings.from_env(env(CLAUDEOPUS_ACCESS_LOG=str(deep))).access_log_path == str(deep)
    assert not deep.parent.exists(), "checking creates nothing"


# The real edge app


@pytest.fixture
def upstream_url() -> Iterator[str]:
    with ThreadedServer(FakeUpstream()) as server:
        yield server.url


async def test_the_edge_logs_each_request_once_and_nothing_from_inside_it(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # anything the app writes relative to the working directory stays here
    canary = f"CANARY-{secrets.token_hex(8)}"
    secret = "sk-co-" + secrets.token_urlsafe(32)
    path = tmp_path / "logs" / "access.log"
    settings = EdgeSettings(
        upstream_url=upstream_url,
        service_token=TOKEN,
        upstream_api_key="upstream-" + canary,
        access_log_path=str(path),
        access_log_stdout=True,
    )
    app = build_app(settings, control_factory=lambda channel, settings: FakeControl())
    body = {"model": f"model-{canary}", "messages": [{"role": "user", "content": canary}], "max_tokens": 3}
    async with (
        HttpServer(app, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client,
    ):
        headers = {"authorization": f"Bearer {secret}", "x-canary": canary}
        plain = await client.post(f"/v1/chat/completions?key={canary}", json=body, headers=headers)
        async with client.stream(
            "POST", f"/v1/chat/completions?key={canary}", json={**body, "stream": True}, headers=headers
        ) as streamed:
            text = (await streamed.aread()).decode()
        refused = await client.get(f"/v1/models?key={canary}")
        unknown = await client.get("/v1/unknown")
    assert (plain.status_code, streamed.status_code, refused.status_code, unknown.status_code) == (200, 200, 401, 404)
    assert canary in plain.text and canary in text, "the upstream echoes the canary back to the client"

    logged = path.read_text()
    lines = logged.splitlines()
    assert capsys.readouterr().out.splitlines() == lines
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m["status"], m["request_id"]) for m in parsed if m] == [
        ("200", plain.headers["x-request-id"]),
        ("200", streamed.headers["x-request-id"]),
        ("401", "-"),
        ("404", "-"),
    ]
    assert [m["path"] for m in parsed if m] == ["/v1/chat/completions"] * 2 + ["/v1/models", "(unmatched)"]
    assert all(m["ip"] == "127.0.0.1" for m in parsed if m)
    for forbidden in (canary, secret, "key=", "?", "Bearer", "upstream-", "model-", "content"):
        assert forbidden not in logged


async def test_inside_an_event_loop_the_lines_of_one_turn_reach_the_file_together(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "access.log")
    with log.opened():
        log.write("first")
        log.write("second")
        assert (tmp_path / "access.log").read_text() == "", "written at the end of the turn, not per line"
        await asyncio.sleep(0)
        assert (tmp_path / "access.log").read_text() == "first\nsecond\n"
        log.write("last")
    assert (tmp_path / "access.log").read_text() == "first\nsecond\nlast\n", "closing writes what is left"
