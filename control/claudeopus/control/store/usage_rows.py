"""Opening a usage row on the hot path: one hand-written INSERT instead of the ORM's.

``UsageRecord.create`` builds its statement anew for every request (about a fifth of
an authorize's CPU); the statement here is fixed text per dialect with bound values,
and the returned :class:`UsageRecord` is the one the ORM would have given. Given the
auth epoch a cached key context was read under, the same statement also checks that
the epoch has not moved, so a cached authorize costs this one statement. A batch of
authorizes opens all its rows with one multi-row INSERT (:func:`insert_open_records`).

Example::

    fields = open_fields(request_id=rid, api_key_id=7, account_id=3, model="m",
                         estimated_input_tokens=120, max_output_tokens=64, stream=False, created_at=now)
    record = await open_record(connection, fields)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from claudeopus.control.models import UsageRecord, UsageSource, UsageStatus
from claudeopus.control.store.sql import Binder, db_value, pg_types

# Rows per INSERT of a batch: 17 bound values each stays far below every driver's limit.
INSERT_ROWS = 500


async def open_record(conn: BaseDBAsyncClient, fields: dict[str, Any], epoch: int | None = None) -> UsageRecord | None:
    """Insert the row of a reservation (:func:`open_fields`); IntegrityError if the request id is taken.

    With ``epoch``, only while the auth epoch still has that value (see
    :mod:`~claudeopus.control.store.auth_epoch`): None when it moved on, nothing inserted.
    """
    bind = Binder(conn.capabilities.dialect)
    if epoch is None:
        values = ", ".join(bind(db_value(value)) for value in fields.values())
        sql = f"INSERT INTO usage_record ({', '.join(fields)}) VALUES ({values}) RETURNING id"  # noqa: S608
    else:
        # PostgreSQL cannot infer the type of a bound value in a SELECT list.
        types = pg_types(UsageRecord) if conn.capabilities.dialect == "postgres" else None
        values = ", ".join(
            f"CAST({bind(db_value(value))} AS {types[name]})" if types else bind(db_value(value))
            for name, value in fields.items()
        )
        sql = (
            f"INSERT INTO usage_record ({', '.join(fields)}) SELECT {values} "  # noqa: S608 - fixed names
            f"WHERE EXISTS (SELECT 1 FROM auth_epoch WHERE id = 1 AND value = {bind(epoch)}) RETURNING id"
        )
    rows = await conn.execute_query_dict(sql, bind.values)
    if not rows:
        return None
    record = UsageRecord(id=int(rows[0]["id"]), **fields)
    record._saved_in_db = True
    return record


def open_fields(
    *,
    request_id: uuid.UUID,
    api_key_id: int,
    account_id: int,
    model: str,
    estimated_input_tokens: int,
    max_output_tokens: int,
    stream: bool,
    created_at: datetime,
    reserved_cost_micros: int = 0,
    reserved_counters: str = "",
) -> dict[str, Any]:
    """Every column of a reservation's row as authorize opens it: state RESERVED, nothing used yet."""
    return {
        "request_id": request_id,
        "api_key_id": api_key_id,
        "account_id": account_id,
        "model": model,
        "input_tokens": 0,
        "output_tokens": 0,
        "estimated_input_tokens": estimated_input_tokens,
        "max_output_tokens": max_output_tokens,
        "latency_us": 0,
        "status": UsageStatus.RESERVED,
        "source": UsageSource.NONE,
        "http_status": 0,
        "stream": stream,
        "created_at": created_at,
        "cost_micros": 0,
        "reserved_cost_micros": reserved_cost_micros,
        "reserved_counters": reserved_counters,
    }


async def insert_open_records(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], *, skip_existing: bool = False
) -> list[uuid.UUID]:
    """Insert many rows of :func:`open_fields` (a batch's), ``INSERT_ROWS`` per statement.

    Returns the request ids inserted. With ``skip_existing`` a row whose request id is taken
    is left out (``ON CONFLICT DO NOTHING``) instead of failing the statement.
    """
    if not rows:
        return []
    columns = list(rows[0])
    inserted: list[uuid.UUID] = []
    types = pg_types(UsageRecord) if conn.capabilities.dialect == "postgres" else None
    for start in range(0, len(rows), INSERT_ROWS):
        bind = Binder(conn.capabilities.dialect)
        part = rows[start : start + INSERT_ROWS]
        if types:
            # One array per column: the statement's text is the same whatever the batch's size,
            # so asyncpg prepares it once per connection instead of once per batch.
            arrays = ", ".join(
                f"{bind([db_value(row[column]) for row in part])}::{types[column]}[]" for column in columns
            )
            values = f"SELECT * FROM UNNEST({arrays})"  # noqa: S608 - fixed names, bound values
        else:
            rows_sql = (", ".join(bind(db_value(row[column])) for column in columns) for row in part)
            values = "VALUES " + ", ".join(f"({row_sql})" for row_sql in rows_sql)
        sql = f"INSERT INTO usage_record ({', '.join(columns)}) {values}"
        if skip_existing:
            sql += " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
            found = await conn.execute_query_dict(sql, bind.values)
            inserted.extend(_as_uuid(row["request_id"]) for row in found)
        else:
            await conn.execute_query(sql, bind.values)
            inserted.extend(row["request_id"] for row in part)
    return inserted


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
