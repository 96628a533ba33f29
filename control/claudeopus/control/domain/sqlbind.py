"""Bound parameters for the few hand-written SQL statements, in the dialect's placeholder style.

Example::

    bind = Binder("postgres")
    sql = f"UPDATE t SET x = {bind(1)} WHERE id = {bind(7)}"   # ... $1 ... $2
    await conn.execute_query(sql, bind.values)
"""

from __future__ import annotations

from typing import Any


class Binder:
    """Collects values; each call returns the placeholder for the value just added."""

    def __init__(self, dialect: str) -> None:
        self._postgres = dialect == "postgres"
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self._postgres else "?"
