"""Owner-only files (``claudeopus.private_files``) and the SQLite database, whatever the umask."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from claudeopus.control.db import open_database, sqlite_file
from claudeopus.private_files import create_private, write_private


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is created must still be owner-only."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_and_new_directories_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    file = tmp_path / "new" / "dir" / "secret.txt"
    write_private(file, "first\n")
    write_private(file, "second\n")  # replaced atomically, still 0600
    assert file.read_text() == "second\n" and mode(file) == 0o600
    assert mode(file.parent) == 0o700 and mode(file.parent.parent) == 0o700
    assert [p.name for p in file.parent.iterdir()] == ["secret.txt"], "no temporary file is left behind"

    existing = tmp_path / "existing.db"
    existing.write_text("kept")
    existing.chmod(0o666)
    create_private(existing)
    assert existing.read_text() == "kept" and mode(existing) == 0o600


async def test_a_sqlite_database_is_created_owner_only(tmp_path: Path, open_umask: None) -> None:
    url = f"sqlite://{tmp_path}/data/claudeopus.db"
    database = sqlite_file(url)
    assert database == tmp_path / "data" / "claudeopus.db"
    async with open_database(url):
        pass
    assert mode(database) == 0o600 and mode(database.parent) == 0o700
    for extra in database.parent.glob("claudeopus.db-*"):  # WAL and shared memory take the file's mode
        assert mode(extra) == 0o600, extra
    assert sqlite_file("sqlite://:memory:") is None and sqlite_file("postgres://u@h/db") is None
