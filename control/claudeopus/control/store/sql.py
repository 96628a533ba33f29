"""What every hand-written statement uses: placeholders, bound values and column types.

Example::

    bind = Binder(conn.capabilities.dialect)
    sql = f"UPDATE t SET x = {bind(db_value(status))} WHERE id = {bind(7)}"   # ... $1 ... $2 on PostgreSQL
    await conn.execute_query(sql, bind.values)
    pg_types(UsageRecord)["created_at"]   # 'TIMESTAMPTZ'
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tortoise.models import Model

from claudeopus.control.models import UsageSource, UsageStatus

_LENGTH = re.compile(r"\(\d+\)$")


class Binder:
    """Collects values; each call returns the placeholder for the value just added."""

    def __init__(self, dialect: str) -> None:
        self._postgres = dialect == "postgres"
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self._postgres else "?"


def db_value(value: object) -> object:
    """``value`` as bound in hand-written SQL: UUIDs as the ORM stores them, enums as their numbers."""
    if isinstance(value, uuid.UUID):
        return str(value)  # as the ORM stores a UUIDField, on PostgreSQL and SQLite alike
    if isinstance(value, UsageStatus | UsageSource):
        return int(value)
    return value


@functools.cache
def pg_types(model: type[Model]) -> Mapping[str, str]:
    """The PostgreSQL type of each column of ``model``'s table, as its Tortoise field declares it.

    For casting bound values PostgreSQL cannot type by itself (``INSERT ... SELECT``,
    ``UNNEST`` arrays). A length is left out (``VARCHAR``, not ``VARCHAR(200)``): a cast to
    a length would cut a longer value instead of letting the column refuse it. Read once per
    model after Tortoise is initialized (foreign-key columns exist from then on): a model's
    fields never change.
    """
    meta = model._meta
    if not meta._inited:
        raise RuntimeError(f"the column types of {model.__name__} are known once Tortoise is initialized")
    return MappingProxyType(
        {
            column: _LENGTH.sub("", meta.fields_map[name].get_for_dialect("postgres", "SQL_TYPE"))
            for name, column in meta.fields_db_projection.items()
        }
    )
