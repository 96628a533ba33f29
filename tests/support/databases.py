"""Test databases: a fresh SQLite file or a fresh PostgreSQL database per use.

``CLAUDEOPUS_TEST_DATABASE`` selects the engine: ``sqlite`` (default) or a
PostgreSQL server URL without a database name, e.g. ``postgres://postgres@127.0.0.1:5432``.

Migrating an empty database takes a good part of a second, so tests that do not test the
migrations themselves start from a copy of one database migrated once per session
(:func:`migrated_database` and :func:`copy_of`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from claudeopus.control.db import apply_migrations

ENV = "CLAUDEOPUS_TEST_DATABASE"


def engine() -> str:
    return "postgres" if os.environ.get(ENV, "sqlite").startswith(("postgres://", "postgresql://")) else "sqlite"


async def _pg_admin(statement: str) -> None:
    server = os.environ[ENV].rstrip("/")
    connection = await asyncpg.connect(server + "/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def _postgres_database(template: str = "") -> Iterator[str]:
    """A new PostgreSQL database (empty, or a copy of the database ``template``), dropped afterwards."""
    name = f"co_test_{uuid.uuid4().hex[:12]}"
    copied = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"{copied}'))
    try:
        yield os.environ[ENV].rstrip("/") + "/" + name
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """Yield a database URL for an empty database; drop it afterwards."""
    if engine() == "sqlite":
        yield f"sqlite://{tmp_path / 'claudeopus.db'}"
        return
    with _postgres_database() as url:
        yield url


@contextmanager
def migrated_database(tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a fresh database with every migration applied; drop it afterwards."""
    with fresh_database(tmp_path) as url:
        asyncio.run(apply_migrations(url))
        yield url


@contextmanager
def copy_of(template_url: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new database holding what ``template_url`` holds; drop it afterwards.

    Nothing may be connected to the template meanwhile (PostgreSQL copies with ``TEMPLATE``).
    """
    if engine() == "sqlite":
        file = tmp_path / "claudeopus.db"
        shutil.copyfile(template_url.removeprefix("sqlite://"), file)
        file.chmod(0o600)
        yield f"sqlite://{file}"
        return
    with _postgres_database(template=template_url.rpartition("/")[2]) as url:
        yield url


def dump_text(database_url: str) -> str:
    """Every row of every table as text: what a privacy check searches."""
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://")
        connection = sqlite3.connect(path)
        try:
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return "\n".join(repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"'))
        finally:
            connection.close()

    async def dump() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            parts = []
            for table in tables:
                rows = await connection.fetch(f'SELECT * FROM "{table["tablename"]}"')
                parts.extend(repr(dict(r)) for r in rows)
            return "\n".join(parts)
        finally:
            await connection.close()

    return asyncio.run(dump())


def usage_row(database_url: str, request_id: str) -> dict[str, object] | None:
    """The usage row of one request as stored (model, reserved and used tokens, status), or None."""
    columns = "model, max_output_tokens, output_tokens, status, settled_at"
    if database_url.startswith("sqlite://"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite://"))
        try:
            found = connection.execute(
                f"SELECT {columns} FROM usage_record WHERE request_id = ?", (request_id,)
            ).fetchone()
        finally:
            connection.close()
        return None if found is None else dict(zip(columns.split(", "), found, strict=True))

    async def fetch() -> dict[str, object] | None:
        connection = await asyncpg.connect(database_url)
        try:
            row = await connection.fetchrow(
                f"SELECT {columns} FROM usage_record WHERE request_id = $1::uuid", request_id
            )
        finally:
            await connection.close()
        return None if row is None else dict(row)

    return asyncio.run(fetch())
