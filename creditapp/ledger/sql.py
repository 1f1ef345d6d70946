"""The ledger's statements, run as plain SQL on the session's own database connection.

Why not SQLAlchemy Core here: the ledger runs ten statements per hold+settle, and executing a
Core statement costs about three times the CPU of the driver's cursor. With several threads
per process that CPU is serialized, and on a hot account it stretches the time a row lock is
held. So the ledger speaks SQL to the driver directly, inside the transaction the session
opened (and commits), and this module hides the two differences between the databases we run
on: the parameter style and how timestamps are stored. The schema itself stays defined by the
models and migrations.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Json

from creditapp.database import DbSession

_NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")
# How SQLAlchemy's DateTime stores values in SQLite: naive UTC text that sorts like time.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


class Statement:
    """SQL written with `:name` parameters; `lock` is PostgreSQL's row-locking clause.

    Parameters are bound by position (psycopg would otherwise reorder a dict on every call).
    """

    def __init__(self, sql: str, *, lock: str = ""):
        text = " ".join(sql.split())
        self.names = tuple(_NAMED_PARAMETER.findall(text))
        self.sqlite = _NAMED_PARAMETER.sub("?", text)
        self.postgresql = _NAMED_PARAMETER.sub("%s", text) + (f" {lock}" if lock else "")

    def values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


class LedgerSql:
    """Runs statements on the connection of the session's current transaction."""

    def __init__(self, session: DbSession):
        connection = session.connection()
        self.postgresql = connection.dialect.name == "postgresql"
        self._cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Any:
        sql = statement.postgresql if self.postgresql else statement.sqlite
        self._cursor.execute(sql, statement.values(params))
        return self._cursor

    def one(self, statement: Statement, **params: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._execute(statement, params).fetchone()
        return row

    def all(self, statement: Statement, **params: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._execute(statement, params).fetchall()
        return rows

    def run(self, statement: Statement, **params: Any) -> None:
        self._execute(statement, params)

    def run_many(self, statement: Statement, rows: list[dict[str, Any]]) -> None:
        if len(rows) == 1:  # the usual case, and executemany costs more for a single row
            self._execute(statement, rows[0])
            return
        sql = statement.postgresql if self.postgresql else statement.sqlite
        self._cursor.executemany(sql, [statement.values(row) for row in rows])

    def time(self, value: datetime | None) -> Any:
        """A timestamp as this database stores it."""
        if value is None or self.postgresql:
            return value
        return value.astimezone(UTC).strftime(_SQLITE_TIME)

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def json(self, value: dict[str, Any]) -> Any:
        return Json(value) if self.postgresql else json.dumps(value)
