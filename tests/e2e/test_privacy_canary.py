"""Privacy canary: the proof of the product's main promise, kept strict.

Unique canary strings go in through every door a client has (system and user messages, text and
attachment parts, tool definitions, tool calls and their arguments, tool results, the ``user``
and ``metadata`` fields, headers and the query string) on every path a request can take: success,
streaming, upstream 4xx and 5xx, bad input refused at the edge, client disconnects, a control
plane that is down (requests refused with 503, settles spooled and replayed after a restart) and
an exhausted budget. The fake upstream echoes the whole request body back, in its answers, tool
calls, a response header and its error bodies, so the canaries also come back through the edge.

Control and edge are real processes logging at DEBUG, the edge writes its access log to a file
(rotated every second, nothing deleted) and to stdout, and settles go to a spool directory. Then
every byte the processes left is searched: the whole database (SQLite: a SQL dump, every row,
and the raw database, WAL and shared-memory files; PostgreSQL: ``pg_dump``, every row of every
table as text and, where the server's data directory is readable, the raw relation files after a
CHECKPOINT), every file under the processes' working directory (access logs including rotated
ones, spool segments, captured stdout/stderr), snapshots of that directory taken while it
changes (spool segments are removed once replayed), and any other regular file the processes
held open. The search covers each canary, each secret (every API key, the admin's management
key, a password and its session token, the service token, the upstream key) and a few of their
encodings: JSON-escaped, URL-encoded, upper-cased, hex and base64. The assertion wants zero hits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from claudeopus.client import Client
from claudeopus.edge.metering.spool import read_spool
from tests.support import admin
from tests.support.databases import engine, fresh_database
from tests.support.fake_upstream import ECHO_ALL, FakeUpstream, ThreadedServer
from tests.support.prices import serve_fake_models
from tests.support.processes import Process, free_port, start_control, start_edge

MAX_BODY_BYTES = 64 * 1024
DEBUG = {"CLAUDEOPUS_LOG_LEVEL": "debug", "GRPC_VERBOSITY": "debug"}
CONTROL_ENV = {**DEBUG}
EDGE_ENV = {
    **DEBUG,
    "CLAUDEOPUS_ACCESS_LOG": "logs/access.log",  # relative to the edge's working directory
    "CLAUDEOPUS_ACCESS_LOG_STDOUT": "1",
    "CLAUDEOPUS_ACCESS_LOG_ROTATE": "1s",
    "CLAUDEOPUS_ACCESS_LOG_KEEP": "999999",  # rotated files are never deleted: every one gets read
    "CLAUDEOPUS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "CLAUDEOPUS_CONTROL_TIMEOUT": "2",
}
WATCH_SECONDS = 0.2
# Canaries of requests the edge must refuse before forwarding anything (fail closed).
REFUSED = ("bad/", "budget/", "control-down/refused", "control-down/models")
# Canaries in odd requests that may or may not be forwarded; headers and query strings never are.
NOT_FORWARDED = ("odd/",)


# -- what is searched for ------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    """One byte string to find; ``fold``: compared case-insensitively."""

    what: str
    data: bytes
    fold: bool = False


def _base64_forms(data: bytes) -> list[tuple[str, bytes]]:
    """``data`` as it appears inside any base64 text, at each of the three alignments, both alphabets."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data)
        start = -(-8 * shift // 6)  # the first character made of ``data`` bits only
        end = 8 * (shift + len(data)) // 6  # past the last such character
        core = encoded[start:end]
        forms += [(f"base64@{shift}", core), (f"base64url@{shift}", core.replace(b"+", b"-").replace(b"/", b"_"))]
    return forms


def _text_forms(value: str) -> list[tuple[str, bytes, bool]]:
    """A value, raw and in the encodings a log or a database could turn it into."""
    forms: list[tuple[str, bytes, bool]] = [
        ("raw", value.encode(), False),
        ("json-escaped", json.dumps(value)[1:-1].encode(), False),
        ("json-escaped-slashes", json.dumps(value)[1:-1].replace("/", "\\/").encode(), False),
        ("json-utf8", json.dumps(value, ensure_ascii=False)[1:-1].encode(), False),
        ("url-encoded", urllib.parse.quote(value, safe="").encode(), False),
        ("url-encoded-plus", urllib.parse.quote_plus(value).encode(), False),
        ("python-repr", repr(value)[1:-1].encode("ascii", "backslashreplace"), False),
        ("upper-cased", value.upper().encode(), False),
        ("any-case", value.encode(), True),
        ("hex", value.encode().hex().encode(), True),
    ]
    forms += [(name, data, False) for name, data in _base64_forms(value.encode())]
    return forms


def _needles(kind: str, label: str, value: str, core: str) -> list[Needle]:
    """Every form of ``value``, and of its random ``core`` (the part no encoding above changes)."""
    found = {}
    for name, data, fold in [*_text_forms(value), *_text_forms(core)]:
        found.setdefault((data.lower() if fold else data, fold), f"{kind} {label!r} ({name})")
    return [Needle(what, data, fold) for (data, fold), what in found.items()]


@dataclass
class Hit:
    where: str
    line: int
    offset: int
    what: str
    excerpt: str

    def __str__(self) -> str:
        excerpt = "".join(ch if ch.isprintable() else "·" for ch in self.excerpt)
        return f"{self.where}:{self.line} (byte {self.offset}): {self.what}: …{excerpt}…"


@dataclass
class Scanner:
    """Searches blobs for every needle; keeps the hits and the scope (files and bytes per kind)."""

    needles: list[Needle] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, label: str, value: str, core: str = "") -> None:
        self.needles += _needles(kind, label, value, core or value)

    def find(self, blob: bytes) -> list[tuple[int, Needle]]:
        folded = blob.lower()
        found = []
        for needle in self.needles:
            offset = (folded if needle.fold else blob).find(needle.data)
            if offset >= 0:
                found.append((offset, needle))
        return found

    def scan(self, where: str, blob: bytes, kind: str, *, file: str = "") -> None:
        found = self.find(blob)
        with self.lock:
            self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + len(blob)
            if file:
                self.files.add(file)
            for offset, needle in found:
                excerpt = blob[max(offset - 80, 0) : offset + len(needle.data) + 80]
                self.hits.append(
                    Hit(where, blob.count(b"\n", 0, offset) + 1, offset, needle.what, excerpt.decode(errors="replace"))
                )

    def report(self, limit: int = 40) -> str:
        """One line per place and leaked value (the first form found), then the leaked values."""
        unique: dict[tuple[str, str], Hit] = {}
        for hit in self.hits:
            unique.setdefault((hit.where, hit.what.split(" (")[0]), hit)
        lines = [str(h) for h in list(unique.values())[:limit]]
        more = f"\n… {len(unique) - limit} more" if len(unique) > limit else ""
        leaked = sorted({what for _, what in unique})
        return "\n".join(lines) + more + f"\nleaked: {leaked}"


class Canaries:
    """Fresh canaries by label; ``special`` ones carry quotes, a slash and non-ASCII text."""

    def __init__(self, scanner: Scanner) -> None:
        self.values: dict[str, str] = {}
        self._scanner = scanner

    def __call__(self, label: str, *, special: bool = False) -> str:
        token = secrets.token_hex(16)  # 128 random bits: searched for alone as well, in any case
        value = f"CANARY-{token}" + (' "quoted" naïve/ü&=+ ✓' if special else "")
        label = label if label not in self.values else f"{label}#{len(self.values)}"
        self.values[label] = value
        self._scanner.add("canary", label, value, token)
        if special:
            self._scanner.add("canary", label, f"CANARY-{token}")
        return value

    def labels_in(self, blob: bytes) -> set[str]:
        """Labels of the canaries found (in any form) in ``blob``."""
        found = {needle.what for _, needle in self._scanner.find(blob)}
        return {label for label in self.values if any(what.startswith(f"canary {label!r} ") for what in found)}


# -- files -------------------------------------------------------------------------------------


def _kind(path: Path, root: Path) -> str:
    name = path.name
    if name.startswith("claudeopus.db"):
        return "db-raw"
    if "spool" in path.relative_to(root).parts[0]:
        return "spool"
    if name.startswith("access.log") or name.endswith((".stdout", ".stderr")):
        return "logs"
    return "other"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # removed meanwhile (a replayed spool segment, a checkpointed WAL)


def scan_tree(scanner: Scanner, root: Path, stage: str, under: Path | None = None) -> dict[str, int]:
    """Every file under ``under`` (default: ``root``) as it is now; returns the bytes read by kind."""
    read: dict[str, int] = {}
    for path in _files(under or root):
        blob = _read(path)
        if blob is not None:
            kind = _kind(path, root)
            scanner.scan(f"{path.relative_to(root)} [{stage}]", blob, kind, file=str(path))
            read[kind] = read.get(kind, 0) + len(blob)
    return read


class TreeWatcher:
    """Scans every file under ``root`` again whenever it changed: catches what is deleted later."""

    def __init__(self, scanner: Scanner, root: Path) -> None:
        self._scanner = scanner
        self._root = root
        self._seen: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.bytes = 0
        self.snapshots = 0

    def __enter__(self) -> TreeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            for path in _files(self._root):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    if self._seen.get(path) == (stat.st_size, stat.st_mtime_ns):
                        continue
                    blob = _read(path)
                    if blob is None:
                        continue
                    self._seen[path] = (stat.st_size, stat.st_mtime_ns)
                    where = f"{path.relative_to(self._root)} [while running]"
                    self._scanner.scan(where, blob, "snapshots", file=str(path))
                    self.bytes += len(blob)
                    self.snapshots += 1


def open_files(processes: list[Process], root: Path) -> set[Path]:
    """Regular files outside ``root`` that the running processes hold open."""
    found = set()
    for process in processes:
        if not process.alive():
            continue
        fd_dir = Path(f"/proc/{process.popen.pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.is_dir() else ():
            with contextlib.suppress(OSError):
                target = Path(os.readlink(fd))
                if target.is_absolute() and target.is_file() and root not in target.parents:
                    found.add(target)
    return found


# -- the database ----------------------------------------------------------------------------


def scan_database(scanner: Scanner, database_url: str) -> dict[str, int]:
    """The whole database, as text and (where it can be read) as raw bytes."""
    if database_url.startswith("sqlite://"):
        path = Path(database_url.removeprefix("sqlite://"))
        raw = 0
        for file in sorted(path.parent.glob(path.name + "*")):  # the database, its WAL and shared memory
            blob = _read(file) or b""
            scanner.scan(f"{file.name} [raw, after stop]", blob, "db-raw", file=str(file))
            raw += len(blob)
        connection = sqlite3.connect(path)
        try:
            dump = "\n".join(connection.iterdump()).encode()
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows = "\n".join(
                repr(row)
                for table in ["sqlite_master", *tables]
                for row in connection.execute(f'SELECT * FROM "{table}"')
            ).encode()
        finally:
            connection.close()
        scanner.scan("sqlite dump (iterdump)", dump, "db-dump")
        scanner.scan(f"sqlite rows ({len(tables)} tables)", rows, "db-dump")
        return {"tables": len(tables), "dump_bytes": len(dump) + len(rows), "raw_bytes": raw}

    figures: dict[str, int] = {"dump_bytes": 0, "raw_bytes": 0}
    if shutil.which("pg_dump"):
        done = subprocess.run(["pg_dump", "--no-owner", database_url], capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, f"pg_dump failed: {done.stderr.decode(errors='replace')}"
        scanner.scan("pg_dump", done.stdout, "db-dump")
        figures["pg_dump_bytes"] = len(done.stdout)
        figures["dump_bytes"] += len(done.stdout)

    async def rows_and_files() -> tuple[list[tuple[str, bytes]], list[str], str]:
        connection = await asyncpg.connect(database_url)
        try:
            tables = await connection.fetch(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
            texts = []
            for table in tables:
                name = f'"{table["schemaname"]}"."{table["tablename"]}"'
                values = await connection.fetch(f"SELECT t::text AS row FROM {name} t")
                texts.append((name, "\n".join(v["row"] for v in values).encode()))
            paths, data_dir = [], ""
            with contextlib.suppress(asyncpg.PostgresError):
                await connection.execute("CHECKPOINT")  # dirty pages to the relation files
                data_dir = await connection.fetchval("SHOW data_directory")
                paths = [
                    r["path"]
                    for r in await connection.fetch(
                        "SELECT pg_relation_filepath(oid) AS path FROM pg_class WHERE relkind IN ('r', 't', 'i', 'm')"
                    )
                    if r["path"]
                ]
            return texts, paths, data_dir
        finally:
            await connection.close()

    texts, paths, data_dir = asyncio.run(rows_and_files())
    figures["tables"] = len(texts)
    for name, text in texts:
        scanner.scan(f"postgres rows of {name}", text, "db-dump")
        figures["dump_bytes"] += len(text)
    # The raw relation files (dead row versions included), when the server is this machine's.
    host = urllib.parse.urlsplit(database_url).hostname
    if data_dir and host in ("127.0.0.1", "localhost", "::1") and os.access(data_dir, os.R_OK):
        for relative in paths:
            main = Path(data_dir) / relative
            for segment in [main, *main.parent.glob(main.name + "_*"), *main.parent.glob(main.name + ".*")]:
                blob = _read(segment) if os.access(segment, os.R_OK) else None  # forks, 1 GB segments
                if blob is not None:
                    scanner.scan(f"postgres relation file {segment}", blob, "db-raw", file=str(segment))
                    figures["raw_bytes"] += len(blob)
                    figures["raw_files"] = figures.get("raw_files", 0) + 1
    return figures


def postgres_server_log(database_url: str) -> tuple[Path, int] | None:
    """Where a local PostgreSQL server logs (its stderr, or its log collector's file) and the size now."""
    if not database_url.startswith(("postgres://", "postgresql://")):
        return None

    async def where() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            with contextlib.suppress(asyncpg.PostgresError):
                current = await connection.fetchval("SELECT pg_current_logfile()")
                if current:
                    return str(Path(await connection.fetchval("SHOW data_directory")) / current)
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{pid}/fd/2")  # a server on this machine: its stderr
            return ""
        finally:
            await connection.close()

    path = Path(asyncio.run(where()))
    if not path.is_absolute() or not path.is_file() or not os.access(path, os.R_OK):
        return None
    return path, path.stat().st_size


# -- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    database_url: str
    token: str = field(repr=False)
    upstream_key: str = field(repr=False)
    upstream: FakeUpstream
    upstream_url: str
    control_port: int
    processes: list[Process] = field(default_factory=list)
    control: Process | None = None
    edge: Process | None = None
    edge_port: int = 0
    # A local PostgreSQL server's log file and its size before the processes started.
    server_log: tuple[Path, int] | None = None

    @property
    def control_target(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}/v1"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    def start_control(self) -> None:
        name = f"control-{sum(p.name.startswith('control') for p in self.processes) + 1}"
        self.control, _ = start_control(
            self.database_url, self.token, self.root, name, env=CONTROL_ENV, port=self.control_port
        )
        self.processes.append(self.control)

    def start_edge(self) -> None:
        self.edge, self.edge_port = start_edge(
            self.control_port,
            self.upstream_url,
            self.token,
            self.root,
            upstream_key=self.upstream_key,
            env=EDGE_ENV,
            spool_dir=self.spool_dir,
        )
        self.processes.append(self.edge)


@dataclass
class Keys:
    main: str = field(repr=False)
    rotated_old: str = field(repr=False)
    rotated_new: str = field(repr=False)
    budget: str = field(repr=False)
    scoped: str = field(repr=False)
    revoked: str = field(repr=False)
    unknown: str = field(repr=False)


def make_keys(stack: Stack, admin_key: str, scanner: Scanner) -> Keys:
    with Client(stack.control_target, key=admin_key) as client:

        def new_key(**options: Any) -> tuple[str, str]:
            account = client.create_account(email=f"canary-{secrets.token_hex(4)}@example.com", role="user")
            created = client.create_api_key(parent=account.name, **options)
            return created.api_key.name, created.secret

        _, main = new_key()
        rotated_name, rotated_old = new_key()
        rotated_new = client.rotate_api_key(rotated_name, grace_period=timedelta(hours=1)).secret
        budget_name, budget = new_key()
        client.create_budget(budget_name, metric="total_tokens", period="total", limit=1)
        _, scoped = new_key(allowed_models=["fake-1"])
        revoked_name, revoked = new_key()
        client.revoke_api_key(revoked_name)
        password = secrets.token_urlsafe(24)
        client.set_password(password)
        session = client.login("root@example.com", password).session_token
    keys = Keys(main, rotated_old, rotated_new, budget, scoped, revoked, "sk-co-" + secrets.token_urlsafe(32))
    for label, value in vars(keys).items():
        scanner.add("secret", f"api key {label}", value, value.removeprefix("sk-co-"))
    scanner.add("secret", "admin management key", admin_key, admin_key.removeprefix("sk-co-"))
    scanner.add("secret", "admin password", password)
    scanner.add("secret", "admin session token", session)
    return keys


# -- requests ----------------------------------------------------------------------------------


def sdk(stack: Stack, secret: str, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url, api_key=secret, max_retries=0, timeout=timeout)


def payload(c: Canaries, path: str, model: str, **extra: Any) -> dict[str, Any]:
    """A chat request with a canary in every place a client can put text."""
    attachment = base64.b64encode(c(f"{path}/attachment").encode()).decode()
    arguments = json.dumps({"query": c(f"{path}/tool-call-arguments", special=True)})
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": c(f"{path}/system")},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": c(f"{path}/user-part", special=True)},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{attachment}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": c(f"{path}/tool-result")},
            {"role": "user", "content": c(f"{path}/user", special=True)},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": c(f"{path}/tool-description"),
                    "parameters": {
                        "type": "object",
                        "properties": {"query": {"type": "string", "description": c(f"{path}/tool-parameter")}},
                    },
                },
            }
        ],
        "user": c(f"{path}/end-user"),
        "max_tokens": 4,
        **extra,
    }


def sdk_extras(c: Canaries, path: str) -> dict[str, Any]:
    """Canaries in the places around the body: a header, the query string, an extra body field."""
    return {
        "extra_headers": {"X-Client-Note": c(f"{path}/header")},
        "extra_query": {"note": c(f"{path}/query")},
        "extra_body": {"metadata": {"note": c(f"{path}/metadata")}},
    }


def stream_text(chunks: list[Any]) -> str:
    parts = []
    for chunk in chunks:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            parts += [t.function.arguments or "" for t in choice.delta.tool_calls or () if t.function]
    return "".join(parts)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the paths -----------------------------------------------------------------------------------


def success_paths(stack: Stack, keys: Keys, c: Canaries) -> None:
    client = sdk(stack, keys.main)
    body = payload(c, "success", "fake-1" + ECHO_ALL)
    reply = client.chat.completions.create(**body, **sdk_extras(c, "success"))
    message = reply.choices[0].message
    assert message.content is not None and c.values["success/system"] in message.content
    assert message.tool_calls and c.values["success/tool-result"] in message.tool_calls[0].function.arguments

    for secret in (keys.rotated_old, keys.rotated_new):
        again = sdk(stack, secret).chat.completions.create(**payload(c, "success-rotated", "fake-1" + ECHO_ALL))
        assert again.choices[0].message.content and "CANARY-" in again.choices[0].message.content

    for include_usage in (False, True):
        path = f"stream-usage-{include_usage}"
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        stream = client.chat.completions.create(
            **payload(c, path, "fake-1" + ECHO_ALL, stream=True, **options), **sdk_extras(c, path)
        )
        text = stream_text(list(stream))
        assert c.values[f"{path}/user-part"].split()[0] in text and c.values[f"{path}/tool-description"] in text

    plain = client.chat.completions.create(
        model="fake-1", messages=[{"role": "user", "content": c("success-plain/user")}], max_tokens=3
    )
    assert plain.choices[0].message.content == f"echo:{c.values['success-plain/user']} w0 w1"


def upstream_error_paths(stack: Stack, keys: Keys, c: Canaries) -> None:
    client = sdk(stack, keys.main)
    expected = {400: 400, 404: 404, 422: 422, 401: 502, 429: 429, 500: 502, 503: 502}
    for status, answered in expected.items():
        for stream in (False, True):
            for model in (f"fake-status-{status}", f"fake-status-{status}{ECHO_ALL}"):
                path = f"{model}/stream-{stream}"
                with pytest.raises(openai.APIStatusError) as caught:
                    client.chat.completions.create(**payload(c, path, model, stream=stream))
                assert caught.value.status_code == answered, (model, stream, caught.value.body)
                if answered in (400, 404, 422):  # the client's own business: the message passes, redacted
                    assert c.values[f"{path}/user"].split()[0] in str(caught.value.body)
                    assert stack.upstream_key not in str(caught.value.body)
    # A 200 that is not JSON, a stream of events that are not JSON and that never ends properly.
    for stream in (False, True):
        path = f"malformed/stream-{stream}"
        body = payload(c, path, "fake-malformed" + ECHO_ALL, stream=stream)
        reply = httpx.post(
            f"{stack.edge_url}/chat/completions", json=body, headers={"authorization": f"Bearer {keys.main}"}
        )
        # Neither passes the malformed text on: a 502, or a started stream ended by an error event.
        assert reply.status_code == (200 if stream else 502), reply.text
        assert '"code":"upstream_error"' in reply.text


def bad_input_paths(stack: Stack, keys: Keys, c: Canaries) -> None:
    """Requests the edge refuses before anything is forwarded, and a few odd ones."""
    url = f"{stack.edge_url}/chat/completions"
    auth = {"authorization": f"Bearer {keys.main}"}

    def good(label: str) -> dict[str, Any]:
        return {"model": "fake-1", "messages": [{"role": "user", "content": c(label, special=True)}]}

    cases: list[tuple[str, dict[str, str], bytes | Iterator[bytes], set[int]]] = []
    cut = json.dumps(good("bad/malformed-json")).encode()[:-7]
    cases.append(("malformed JSON", auth, cut, {400}))
    cases.append(("not an object", auth, json.dumps([c("bad/not-an-object")]).encode(), {400}))
    wrong_types: dict[str, Any] = {
        "messages-string": {"model": "fake-1", "messages": c("bad/messages-string")},
        "message-string": {"model": "fake-1", "messages": [c("bad/message-string")]},
        "model-list": {"model": [c("bad/model-list")], "messages": [{"role": "user", "content": "x"}]},
        "model-object": {"model": {"name": c("bad/model-object")}, "messages": [{"role": "user", "content": "x"}]},
        "model-control-char": {"model": f"{c('bad/model-control-char')}\n", "messages": [{"role": "user"}]},
        "stream-string": {**good("bad/stream-string-content"), "stream": c("bad/stream-string")},
        "max-tokens-string": {**good("bad/max-tokens-content"), "max_tokens": c("bad/max-tokens-string")},
        "stream-options-string": {**good("bad/so-content"), "stream": True, "stream_options": c("bad/so-string")},
        "stream-options-without-stream": {**good("bad/sows-content"), "stream_options": {"x": c("bad/sows")}},
        "include-usage-string": {
            **good("bad/iu-content"),
            "stream": True,
            "stream_options": {"include_usage": c("bad/include-usage-string")},
        },
        "missing-model": {"messages": [{"role": "user", "content": c("bad/missing-model")}]},
        "missing-messages": {"model": "fake-1", "prompt": c("bad/missing-messages")},
    }
    cases += [(name, auth, json.dumps(body).encode(), {400}) for name, body in wrong_types.items()]
    duplicate = b'{"model":"fake-1","model":"fake-2","messages":[{"role":"user","content":"%s"}]}'
    # Served: the edge reads the last "model" and the upstream gets that one only.
    cases.append(("duplicate key", auth, duplicate % c("success-duplicate/key").encode(), {200}))
    non_utf8 = b'{"model":"fake-1","messages":[{"role":"user","content":"%s \xff\xfe"}]}'
    cases.append(("non-UTF-8", auth, non_utf8 % c("bad/non-utf8").encode(), {400}))
    big = json.dumps(good("bad/too-large")).encode()
    big = big[:-2] + b',"pad":"' + b" ".join([c("bad/too-large-pad").encode()] * 3000) + b'"}'
    assert len(big) > MAX_BODY_BYTES
    cases.append(("too large", auth, big, {413}))
    cases.append(("too large, chunked", auth, iter([big[:1000], big[1000:]]), {413}))
    body = json.dumps(good("bad/no-key")).encode()
    cases.append(("no key", {}, body, {401}))
    cases.append(("canary as key", {"authorization": f"Bearer {c('bad/key-canary')}"}, body, {401}))
    cases.append(("basic auth", {"authorization": f"Basic {c('bad/basic-auth')}"}, body, {401}))
    cases.append(("unknown key", {"authorization": f"Bearer {keys.unknown}"}, body, {401}))
    cases.append(("revoked key", {"authorization": f"Bearer {keys.revoked}"}, body, {401}))
    scoped = json.dumps({**good("bad/model-not-allowed"), "model": "fake-2"}).encode()
    cases.append(("model not allowed", {"authorization": f"Bearer {keys.scoped}"}, scoped, {403}))
    absurd = {**auth, "x-client-note": " ".join([c("odd/absurd-header")] * 150)}
    cases.append(("absurd header", absurd, json.dumps(good("odd/absurd-header-body")).encode(), {400, 431, 200}))

    with httpx.Client(timeout=30) as client:
        for name, headers, content, statuses in cases:
            reply = client.post(url, content=content, headers={"content-type": "application/json", **headers})
            assert reply.status_code in statuses, (name, reply.status_code, reply.text)
            assert reply.status_code == 200 or reply.json()["error"]["message"], name
        # Other content types, routes and methods: never a 5xx, never a stack trace.
        text = client.post(
            url, content=json.dumps(good("odd/text-plain")), headers={**auth, "content-type": "text/plain"}
        )
        assert text.status_code < 500
        unknown = client.post(f"{stack.edge_url}/unknown?q={c('odd/unknown-query')}", json=good("odd/unknown-body"))
        assert unknown.status_code == 404
        wrong_method = client.get(url, params={"q": c("odd/wrong-method-query")}, headers=auth)
        assert wrong_method.status_code in (404, 405)
        models = client.get(
            f"{stack.edge_url}/models", params={"q": c("odd/models-query")}, headers={**auth, "x-note": c("odd/models")}
        )
        assert models.status_code == 200

    # A body cut off mid-upload (raw socket), with a non-ASCII header value.
    partial = json.dumps(good("bad/cut-upload")).encode()
    head = (
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys.main}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(partial) + 5000}\r\n"
        ).encode()
        + b"X-Note: "
        + c("bad/raw-header").encode()
        + b" \xe9\xff\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.edge_port), timeout=10) as raw:
        raw.sendall(head + partial)
        time.sleep(0.2)


def budget_paths(stack: Stack, keys: Keys, c: Canaries) -> None:
    client = sdk(stack, keys.budget)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**payload(c, f"budget/stream-{stream}", "fake-1", stream=stream))
        assert caught.value.status_code == 429 and caught.value.code == "insufficient_quota"


def disconnect_paths(stack: Stack, keys: Keys, c: Canaries) -> None:
    auth = {"authorization": f"Bearer {keys.main}"}
    body = payload(c, "disconnect/mid-stream", "fake-slow" + ECHO_ALL, stream=True, max_tokens=40)
    with httpx.stream("POST", f"{stack.edge_url}/chat/completions", json=body, headers=auth, timeout=30) as response:
        assert response.status_code == 200
        lines = 0
        for line in response.iter_lines():
            lines += line.startswith("data: ")
            if lines == 2:
                break  # leaving the block closes the connection mid-stream

    stream = sdk(stack, keys.main).chat.completions.create(
        **payload(c, "disconnect/sdk-stream", "fake-slow" + ECHO_ALL, stream=True, max_tokens=40)
    )
    next(iter(stream))
    stream.close()

    body = payload(c, "disconnect/before-first-chunk", "fake-pause-first" + ECHO_ALL, stream=True)
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST", f"{stack.edge_url}/chat/completions", json=body, headers=auth, timeout=httpx.Timeout(30, read=0.5)
        ) as response,
    ):
        response.read()


def control_down_paths(stack: Stack, keys: Keys, c: Canaries, scanner: Scanner) -> dict[str, int]:
    """Requests in flight when control stops settle into the spool; new ones get 503; replay after restart."""
    url = f"{stack.edge_url}/chat/completions"
    auth = {"authorization": f"Bearer {keys.main}"}
    model = "fake-hold" + ECHO_ALL

    def held(label: str, stream: bool, read_timeout: float = 60) -> int:
        body = payload(c, label, model, stream=stream)
        timeout = httpx.Timeout(60, read=read_timeout)
        try:
            with httpx.stream("POST", url, json=body, headers=auth, timeout=timeout) as response:
                response.read()
                return response.status_code
        except httpx.ReadTimeout:
            return 0  # the client gave up (a disconnect while the answer is held)

    labels = [(f"control-down/held-{i}", i % 2 == 1) for i in range(4)]
    before = len(stack.upstream.received)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = [pool.submit(held, label, stream) for label, stream in labels]
        gave_up = pool.submit(held, "control-down/held-client-gave-up", False, 0.5)
        wait_until(lambda: len(stack.upstream.received) - before >= 5, 20, "the held requests to be forwarded")
        assert stack.control is not None and stack.control.stop() == 0, "control stops gracefully"

        client = sdk(stack, keys.main)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(**payload(c, f"control-down/refused-{stream}", "fake-1"))
            assert caught.value.status_code == 503
        refused = httpx.post(url, json=payload(c, "control-down/refused-raw", "fake-1"), headers=auth, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "control_unavailable"
        listed = httpx.get(f"{stack.edge_url}/models", headers={**auth, "x-note": c("control-down/models")})
        assert listed.status_code == 503

        assert gave_up.result() == 0, "the client gave up on a held answer"
        stack.upstream.release.set()
        assert [a.result() for a in answers] == [200] * 4
    wait_until(lambda: len(read_spool(stack.spool_dir)) >= 4, 20, "the settles to be spooled")
    time.sleep(0.3)  # the given-up request's settle, too
    spooled = len(read_spool(stack.spool_dir))
    # Before replay removes the segments: the spool as control's outage left it.
    spool_bytes = sum(scan_tree(scanner, stack.root, "control down", stack.spool_dir).values())

    stack.start_control()  # on the same port: the edge's replayer finds it there
    segments = lambda: list(stack.spool_dir.glob("settles-*.log"))  # noqa: E731
    wait_until(lambda: not segments(), 20, "the spool to be replayed")
    client = sdk(stack, keys.main)
    deadline = time.monotonic() + 10
    while True:  # the edge reconnects to the new control within a few seconds
        try:
            back = client.chat.completions.create(**payload(c, "control-back/success", "fake-1" + ECHO_ALL))
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline, "the edge did not reconnect to the restarted control"
            time.sleep(0.2)
    assert c.values["control-back/success/system"] in (back.choices[0].message.content or "")
    return {"spooled_settles": spooled, "spool_bytes": spool_bytes}


# -- the test ------------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    root = tmp_path / "processes"
    root.mkdir()
    upstream = FakeUpstream()
    with fresh_database(root) as url, ThreadedServer(upstream) as server:
        built = Stack(
            root,
            url,
            secrets.token_urlsafe(32),
            "sk-upstream-" + secrets.token_urlsafe(24),
            upstream,
            server.url,
            free_port(),
        )
        try:
            built.server_log = postgres_server_log(url)
            built.start_control()
            built.start_edge()
            yield built
        finally:
            upstream.release.set()
            for process in reversed(built.processes):
                process.stop()


def test_no_canary_and_no_secret_is_stored_or_logged_anywhere(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    scanner = Scanner()
    c = Canaries(scanner)
    scanner.add("secret", "service token", stack.token)
    scanner.add("secret", "upstream key", stack.upstream_key, stack.upstream_key.removeprefix("sk-upstream-"))
    _check_the_search_itself(c, scanner)

    with TreeWatcher(scanner, stack.root) as watcher:
        boot = admin.bootstrap(stack.control_target, stack.root, display_name="")
        serve_fake_models(stack.control_target, boot.secret)  # only priced models are served
        keys = make_keys(stack, boot.secret, scanner)

        success_paths(stack, keys, c)
        upstream_error_paths(stack, keys, c)
        bad_input_paths(stack, keys, c)
        budget_paths(stack, keys, c)
        disconnect_paths(stack, keys, c)
        control = control_down_paths(stack, keys, c, scanner)

        outside = open_files(stack.processes, stack.root)
        running = scan_tree(scanner, stack.root, "running")
        assert stack.edge is not None and stack.control is not None
        assert stack.edge.stop() == 0, "the edge stops gracefully"
        assert stack.control.stop() == 0, "control stops gracefully"
        time.sleep(WATCH_SECONDS * 2)  # one more look at what the shutdown wrote

    # Every canary category really went through: the upstream saw those the edge forwarded.
    forwarded = c.labels_in(b"\n".join(r.raw for r in stack.upstream.received))
    refused = {label for label in c.values if label.startswith(REFUSED)}
    elsewhere = {
        label for label in c.values if label.startswith(NOT_FORWARDED) or label.endswith(("/header", "/query"))
    }
    assert not forwarded & refused, f"refused requests reached the upstream: {sorted(forwarded & refused)}"
    missing = set(c.values) - forwarded - refused - elsewhere
    assert not missing, f"canaries that never reached the upstream (the test did not exercise them): {missing}"

    stopped = scan_tree(scanner, stack.root, "after stop")
    for path in sorted(outside):
        scanner.scan(f"{path} [held open by a process]", _read(path) or b"", "outside", file=str(path))
    database = scan_database(scanner, stack.database_url)
    server_log_bytes = 0
    if stack.server_log is not None:  # what the PostgreSQL server logged meanwhile (errors quote values)
        path, start = stack.server_log
        with path.open("rb") as log:
            log.seek(start)
            written = log.read()
        scanner.scan(f"{path} (from byte {start})", written, "db-server-log", file=str(path))
        server_log_bytes = len(written)

    access = sorted((stack.root / "logs").glob("access.log*"))
    edge_stdout = (stack.root / "edge.stdout").read_text()
    assert len(access) >= 2, "the access log rotated (every file of it was read)"
    assert sum(len(p.read_text().splitlines()) for p in access) >= 50 and edge_stdout.count("/v1/chat/completions")
    assert " DEBUG " in (stack.root / "edge.stderr").read_text(), "the edge logged at DEBUG"
    assert " DEBUG " in "".join((stack.root / f"control-{n}.stderr").read_text() for n in (1, 2))

    scope = {
        "database": engine(),
        "files": len(scanner.files),
        "files_in_process_dirs": sum(str(stack.root) in f for f in scanner.files),
        "access_log_files": len(access),
        "db_dump_bytes": database["dump_bytes"],
        "db_raw_bytes": database["raw_bytes"],
        "db_tables": database["tables"],
        "log_bytes": stopped["logs"],
        "files_after_stop_bytes": stopped,
        "files_while_running_bytes": running,
        "snapshot_bytes": watcher.bytes,
        "snapshots": watcher.snapshots,
        "bytes_by_kind": dict(sorted(scanner.bytes_by_kind.items())),
        "spooled_settles": control["spooled_settles"],
        "spool_bytes_before_replay": control["spool_bytes"],
        "open_files_outside": len(outside),
        "db_server_log_bytes": server_log_bytes,
        "canaries": len(c.values),
        "secrets": len({n.what.split(" (")[0] for n in scanner.needles if n.what.startswith("secret")}),
        "needles": len(scanner.needles),
        "upstream_requests": len(stack.upstream.received),
        "hits": len(scanner.hits),
        "seconds": round(time.monotonic() - started, 1),
    }
    if "pg_dump_bytes" in database:
        scope["pg_dump_bytes"] = database["pg_dump_bytes"]
    summary = (
        f"privacy canary on {scope['database']}: {scope['canaries']} canaries and {scope['secrets']} secrets "
        f"({scope['needles']} byte patterns) searched in {scope['files']} files; DB dump {scope['db_dump_bytes']} B, "
        f"raw DB {scope['db_raw_bytes']} B, logs {scope['log_bytes']} B, spool {scope['spool_bytes_before_replay']} B "
        f"before replay, {scope['snapshot_bytes']} B of snapshots while running, "
        f"{sum(scanner.bytes_by_kind.values())} B in all; hits = {scope['hits']}"
    )
    record_property("privacy_canary", scope)
    print(f"\n{summary}\n{json.dumps(scope, indent=1)}")
    assert scanner.hits == [], f"LEAK: {summary}\n{scanner.report()}"


def _check_the_search_itself(c: Canaries, scanner: Scanner) -> None:
    """The scanner finds a canary in each encoding it claims to cover (and nothing in clean text)."""
    probe = c("self-check", special=True)
    core = probe.split()[0]
    token = core.removeprefix("CANARY-")
    forms = [
        probe.encode(),
        json.dumps({"x": probe}).encode(),
        json.dumps({"x": probe}, ensure_ascii=False).encode(),
        urllib.parse.quote(probe).encode(),
        urllib.parse.quote_plus(probe).encode(),
        probe.upper().encode(),
        token.upper().encode(),
        base64.b64encode(b"ab" + probe.encode()),
        base64.urlsafe_b64encode(b"a" + core.encode()),
        base64.b64encode(token.encode()),
        core.encode().hex().upper().encode(),
        repr(probe.encode()).encode(),
    ]
    for form in forms:
        assert c.labels_in(b"prefix " + form + b" suffix") == {"self-check"}, form
    assert scanner.find(b"nothing to see here " + secrets.token_hex(64).encode()) == []
    del c.values["self-check"]
