"""Database configuration and start-up: PostgreSQL through asyncpg, or a SQLite file.

A SQLite file holds account data and key hashes, so it is created owner-only (0600, its
directory 0700 when missing) whatever the umask; SQLite gives its WAL and shared-memory
files the database file's mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext
from tortoise.migrations.api import migrate

from claudeopus.control.settings import DEFAULT_DATABASE_URL
from claudeopus.private_files import create_private

APP_LABEL = "control"
MODELS_MODULE = "claudeopus.control.models"
MIGRATIONS_MODULE = "claudeopus.control.migrations"


async def _keep_session(connection: object) -> None:
    """asyncpg's pool reset, replaced: nothing to undo.

    By default asyncpg runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, one more round trip and parse per query. The
    control plane never takes advisory locks, opens cursors, listens or SETs
    anything, and a failed transaction is rolled back before release, so a
    released connection is already clean.
    """


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise configuration for ``database_url`` (``postgres://`` maps to asyncpg)."""
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgres://" + url.removeprefix("postgresql://")
    connection: str | dict[str, Any] = url
    if url.startswith(("postgres://", "asyncpg://")):
        expanded = expand_db_url(url)
        expanded["credentials"]["reset"] = _keep_session
        connection = expanded
    return {
        "connections": {"default": connection},
        "apps": {
            APP_LABEL: {
                "models": [MODELS_MODULE],
                "migrations": MIGRATIONS_MODULE,
                "default_connection": "default",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# Read by `python -m tortoise makemigrations` through [tool.tortoise] in pyproject.toml.
MIGRATIONS_CONFIG = tortoise_config(DEFAULT_DATABASE_URL)


def sqlite_file(database_url: str) -> Path | None:
    """The file of a ``sqlite://`` URL; None for PostgreSQL and for an in-memory database."""
    if not database_url.startswith("sqlite://"):
        return None
    path = str(expand_db_url(database_url)["credentials"]["file_path"])
    return None if path == ":memory:" or not path else Path(path)


async def apply_migrations(database_url: str) -> None:
    """Bring the schema up to date (safe to run on every start, by every replica)."""
    async with TortoiseContext():
        await migrate(config=tortoise_config(database_url))


@asynccontextmanager
async def open_database(database_url: str) -> AsyncIterator[TortoiseContext]:
    """Apply migrations, then keep a connection pool open for the body.

    Everything that queries the models must run inside the body (tasks started
    there inherit the context).
    """
    file = sqlite_file(database_url)
    if file is not None:
        await asyncio.to_thread(create_private, file)
    await apply_migrations(database_url)
    async with TortoiseContext() as ctx:
        await ctx.init(config=tortoise_config(database_url))
        try:
            yield ctx
        finally:
            await ctx.close_connections()
