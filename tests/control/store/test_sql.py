"""store/sql.py: placeholders per dialect, bound values, and column types read from the models."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from tortoise.context import TortoiseContext

from claudeopus.control.db import open_database
from claudeopus.control.models import UsageRecord, UsageSource, UsageStatus
from claudeopus.control.store.sql import Binder, db_value, pg_types
from tests.support.databases import engine

# The casts the usage row INSERTs used when these types were written out by hand.
USAGE_RECORD_CASTS = {
    "request_id": "UUID",
    "api_key_id": "BIGINT",
    "account_id": "BIGINT",
    "model": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "estimated_input_tokens": "BIGINT",
    "max_output_tokens": "BIGINT",
    "latency_us": "BIGINT",
    "status": "SMALLINT",
    "source": "SMALLINT",
    "http_status": "SMALLINT",
    "stream": "BOOL",
    "created_at": "TIMESTAMPTZ",
    "cost_micros": "BIGINT",
    "reserved_cost_micros": "BIGINT",
    "reserved_counters": "VARCHAR",
    "settled_at": "TIMESTAMPTZ",
}
# information_schema's names for the same types.
_SCHEMA_NAMES = {
    "UUID": "uuid",
    "BIGINT": "bigint",
    "VARCHAR": "character varying",
    "SMALLINT": "smallint",
    "BOOL": "boolean",
    "TIMESTAMPTZ": "timestamp with time zone",
}


def test_binder_numbers_placeholders_on_postgres_and_uses_question_marks_on_sqlite() -> None:
    postgres, sqlite = Binder("postgres"), Binder("sqlite")
    assert [postgres(1), postgres("a")] == ["$1", "$2"]
    assert [sqlite(1), sqlite("a")] == ["?", "?"]
    assert postgres.values == sqlite.values == [1, "a"]


def test_db_value_binds_uuids_as_text_and_usage_enums_as_numbers() -> None:
    rid = uuid.uuid4()
    assert db_value(rid) == str(rid)
    assert db_value(UsageStatus.SUCCEEDED) == 2 and type(db_value(UsageStatus.SUCCEEDED)) is int
    assert db_value(UsageSource.ESTIMATED) == 2 and type(db_value(UsageSource.ESTIMATED)) is int
    assert db_value(7) == 7 and db_value("m") == "m" and db_value(None) is None


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[TortoiseContext]:
    async with open_database(database_url) as ctx:
        yield ctx


async def test_column_types_come_from_the_models_and_match_the_table(database: TortoiseContext) -> None:
    types = pg_types(UsageRecord)
    assert {column: types[column] for column in USAGE_RECORD_CASTS} == USAGE_RECORD_CASTS
    assert types["id"] == "BIGINT"
    if engine() != "postgres":
        return
    rows = await database.db().execute_query_dict(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'usage_record'"
    )
    in_table = {row["column_name"]: row["data_type"] for row in rows}
    assert {column: _SCHEMA_NAMES[kind] for column, kind in types.items()} == in_table
