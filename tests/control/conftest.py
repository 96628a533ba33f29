"""Fixtures of the control tests that call the domain directly (see tests/support/world.py).

``db`` opens a fresh database, ``root`` bootstraps its admin, ``world`` adds the account tree.
A module may define its own ``world`` (the API tests' worlds are servers, not this tree).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from claudeopus.control.db import open_database
from tests.support.world import Root, World, new_root, new_world


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[None]:
    async with open_database(database_url):
        yield


@pytest.fixture
async def root(db: None) -> Root:
    return await new_root()


@pytest.fixture
async def world(root: Root) -> World:
    return await new_world(root)
