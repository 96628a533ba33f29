"""Every hand-written SQL statement of the ledger, in the dialect's placeholder style.

The ORM builds each statement anew per call; on the hot path (holds, settles, leases) these
are fixed text with bound values, and several keep a condition the ORM cannot express in one
statement (a hold that fits, a row still as it was read). Each function runs one statement on
the connection it is given (a transaction's, for those that must share one). Opening usage rows
is :mod:`claudeopus.control.store.usage_rows`.

Example::

    if not await store.try_hold(conn, budget_id=3, period_index=0, amount=40, limit=1000):
        ...   # the budget cannot hold 40 more
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from claudeopus.control.models import Price, UsageRecord, ids_on_path
from claudeopus.control.store.sql import Binder, db_value

# Open amounts of a lease, in the order of :func:`take_from_lease`'s arguments.
_LEASE_OPEN = ("open_input_tokens", "open_output_tokens", "open_cost_micros")


def _postgres(conn: BaseDBAsyncClient) -> bool:
    return conn.capabilities.dialect == "postgres"


# -- budget counters ------------------------------------------------------------------------------


async def try_hold(conn: BaseDBAsyncClient, *, budget_id: int, period_index: int, amount: int, limit: int) -> bool:
    """``reserved += amount`` in the counter, only if it still fits under ``limit``; False if it does not (or none)."""
    bind = Binder(conn.capabilities.dialect)
    sql = (
        f"UPDATE budget_counter SET reserved = reserved + {bind(amount)} "  # noqa: S608 - fixed text, bound values
        f"WHERE budget_id = {bind(budget_id)} AND period_index = {bind(period_index)} "
        f"AND reserved <= {bind(limit - amount)} - spent"
    )
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0


async def ensure_counter(conn: BaseDBAsyncClient, *, budget_id: int, period_index: int, metric: int) -> None:
    """The counter of the budget's period, created empty unless it exists."""
    bind = Binder(conn.capabilities.dialect)
    sql = (
        "INSERT INTO budget_counter (budget_id, period_index, metric, spent, reserved) "  # noqa: S608
        f"VALUES ({bind(budget_id)}, {bind(period_index)}, {bind(metric)}, 0, 0) "
        "ON CONFLICT (budget_id, period_index) DO NOTHING"
    )
    await conn.execute_query(sql, bind.values)


async def read_counter(
    conn: BaseDBAsyncClient, *, budget_id: int, period_index: int, lock: bool = False
) -> tuple[int, int] | None:
    """(spent, reserved) of the counter, None when it has none; ``lock``: FOR UPDATE (SQLite has one writer)."""
    bind = Binder(conn.capabilities.dialect)
    suffix = " FOR UPDATE" if lock and _postgres(conn) else ""
    sql = (
        "SELECT spent, reserved FROM budget_counter "  # noqa: S608 - fixed text, bound values
        f"WHERE budget_id = {bind(budget_id)} AND period_index = {bind(period_index)}{suffix}"
    )
    rows = await conn.execute_query_dict(sql, bind.values)
    return (int(rows[0]["spent"]), int(rows[0]["reserved"])) if rows else None


async def move_counter(
    conn: BaseDBAsyncClient, *, budget_id: int, period_index: int, release: int, charge: int, cap: int
) -> None:
    """``reserved -= release``, ``spent += charge`` (saturating at ``cap``) in one counter."""
    bind = Binder(conn.capabilities.dialect)
    sql = (
        f"UPDATE budget_counter SET reserved = reserved - {bind(release)}, "  # noqa: S608
        f"spent = CASE WHEN spent >= {bind(cap - charge)} THEN {bind(cap)} "
        f"ELSE spent + {bind(charge)} END "
        f"WHERE budget_id = {bind(budget_id)} AND period_index = {bind(period_index)}"
    )
    await conn.execute_query(sql, bind.values)


# -- usage rows -----------------------------------------------------------------------------------


async def records_with_chains(
    conn: BaseDBAsyncClient, request_ids: Sequence[uuid.UUID]
) -> tuple[dict[uuid.UUID, UsageRecord], dict[int, tuple[int, ...]]]:
    """The usage rows of ``request_ids`` and, per row id, its account's chain (root first): one query."""
    if not request_ids:
        return {}, {}
    bind = Binder(conn.capabilities.dialect)
    wanted = ", ".join(bind(str(rid)) for rid in request_ids)
    sql = (
        "SELECT usage_record.*, account.path AS account_path FROM usage_record "  # noqa: S608 - bound values
        f"JOIN account ON account.id = usage_record.account_id WHERE usage_record.request_id IN ({wanted})"
    )
    records: dict[uuid.UUID, UsageRecord] = {}
    chains: dict[int, tuple[int, ...]] = {}
    for row in await conn.execute_query_dict(sql, bind.values):
        path = row.pop("account_path")
        record = UsageRecord._init_from_db(**row)
        records[record.request_id] = record
        chains[record.id] = tuple(ids_on_path(path))
    return records, chains


async def close_record(conn: BaseDBAsyncClient, record: UsageRecord, fields: dict[str, Any]) -> bool:
    """Write ``fields`` to the row if it is still as read (same state, same holds); False if someone changed it."""
    bind = Binder(conn.capabilities.dialect)
    assignments = ", ".join(f"{column} = {bind(db_value(value))}" for column, value in fields.items())
    sql = (
        f"UPDATE usage_record SET {assignments} "  # noqa: S608 - fixed column names, bound values
        f"WHERE id = {bind(record.id)} AND status = {bind(int(record.status))} "
        f"AND reserved_counters = {bind(record.reserved_counters)}"
    )
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0


async def taken_request_ids(conn: BaseDBAsyncClient, request_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``request_ids`` already have a usage row: one query."""
    bind = Binder(conn.capabilities.dialect)
    wanted = ", ".join(bind(str(rid)) for rid in request_ids)
    sql = f"SELECT request_id FROM usage_record WHERE request_id IN ({wanted})"  # noqa: S608 - bound values
    rows = await conn.execute_query_dict(sql, bind.values)
    return {_as_uuid(row["request_id"]) for row in rows}


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


async def record_exists(conn: BaseDBAsyncClient, request_id: uuid.UUID) -> bool:
    bind = Binder(conn.capabilities.dialect)
    sql = f"SELECT 1 FROM usage_record WHERE request_id = {bind(str(request_id))}"  # noqa: S608
    return bool(await conn.execute_query_dict(sql, bind.values))


async def prices_on(
    conn: BaseDBAsyncClient, account_ids: Sequence[int], models: Sequence[str]
) -> dict[tuple[int, str], list[Price]]:
    """The prices set on any of ``account_ids`` for any of ``models``, per (account id, model): one query."""
    bind = Binder(conn.capabilities.dialect)
    sql = (
        "SELECT account_id, model, input_micros_per_million, output_micros_per_million FROM price "  # noqa: S608
        f"WHERE account_id IN ({', '.join(bind(a) for a in account_ids)}) "
        f"AND model IN ({', '.join(bind(m) for m in models)})"
    )
    by_place: dict[tuple[int, str], list[Price]] = {}
    for row in await conn.execute_query_dict(sql, bind.values):
        by_place.setdefault((int(row["account_id"]), row["model"]), []).append(Price(**row))
    return by_place


# -- leases ---------------------------------------------------------------------------------------


async def epoch_for_grant(conn: BaseDBAsyncClient) -> int:
    """The auth epoch as a grant's transaction sees it; on PostgreSQL under a share lock (-1: no row)."""
    sql = "SELECT value FROM auth_epoch WHERE id = 1"
    rows = await conn.execute_query_dict(sql + " FOR SHARE" if _postgres(conn) else sql)
    return int(rows[0]["value"]) if rows else -1


async def take_from_lease(
    conn: BaseDBAsyncClient, *, lease_id: int, unlimited: bool, amounts: tuple[int, int, int], requests: int
) -> bool:
    """Move reservations worth ``amounts`` (input, output, cost) out of the lease, only if it holds them.

    An ``unlimited`` lease holds nothing: only its count of opened requests moves.
    """
    bind = Binder(conn.capabilities.dialect)
    moved_amounts = (0, 0, 0) if unlimited else amounts
    # Bound in the order the text has them (SQLite's placeholders are positional).
    moved = ", ".join(f"{c} = {c} - {bind(amount)}" for c, amount in zip(_LEASE_OPEN, moved_amounts, strict=True))
    opened = f"requests_opened = requests_opened + {bind(requests)}"
    which = f"id = {bind(lease_id)}"
    holds = " AND ".join(f"{c} >= {bind(amount)}" for c, amount in zip(_LEASE_OPEN, moved_amounts, strict=True))
    sql = f"UPDATE budget_lease SET {moved}, {opened} WHERE {which} AND (unlimited OR ({holds}))"  # noqa: S608
    changed, _ = await conn.execute_query(sql, bind.values)
    return changed > 0


async def drop_finished_leases(conn: BaseDBAsyncClient, lease_ids: Sequence[uuid.UUID]) -> None:
    """Delete the returned leases whose every admitted request has its row: they hold nothing more."""
    if not lease_ids:
        return
    bind = Binder(conn.capabilities.dialect)
    wanted = ", ".join(bind(str(lease_id)) for lease_id in lease_ids)
    sql = (
        f"DELETE FROM budget_lease WHERE lease_id IN ({wanted}) "  # noqa: S608 - bound values
        "AND requests_admitted IS NOT NULL AND requests_opened >= requests_admitted"
    )
    await conn.execute_query(sql, bind.values)
