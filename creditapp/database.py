"""Transactions as the ledger needs them, on PostgreSQL and on the embedded SQLite file.

PostgreSQL runs READ COMMITTED; the ledger's conditional updates and row locks make each
operation safe. SQLite allows one writer at a time: a write transaction starts with
`BEGIN IMMEDIATE` so that it takes the write lock up front instead of failing half way
when it upgrades from reading, and waits for it under `busy_timeout`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, event, text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.types import TypeDecorator

_WRITE_OPTION = "creditapp_write"

# Services take either a plain session or Flask-SQLAlchemy's scoped one (`db.session`).
DbSession = Session | scoped_session[Any]


def configure_engine(engine: Engine) -> None:
    """Install the SQLite pragmas and the BEGIN IMMEDIATE hook; PostgreSQL needs nothing."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection):  # type: ignore[no-untyped-def]
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


_AFTER_COMMIT = "creditapp.after_commit"


def after_commit(session: DbSession, action: Callable[[], None]) -> None:
    """Run `action` once the session's current transaction has committed, never if it rolls
    back: how work for Celery is enqueued only after what asked for it is durable."""
    plain: Session = session() if isinstance(session, scoped_session) else session
    plain.info.setdefault(_AFTER_COMMIT, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, []):
        action()


@event.listens_for(Session, "after_rollback")
def _forget_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


@contextmanager
def write_transaction(session: DbSession) -> Iterator[Session]:
    """One short write transaction: commits on success, rolls back on any error.

    On SQLite a read transaction the session has open (for example from loading the caller) is
    ended first, so that the write lock is taken at BEGIN rather than failing on an upgrade. On
    PostgreSQL it simply continues as the write transaction (READ COMMITTED: nothing read
    earlier is relied on as a snapshot), which saves a COMMIT and a BEGIN.
    """
    plain: Session = session() if isinstance(session, scoped_session) else session
    if plain.get_bind().dialect.name == "sqlite":
        if plain.in_transaction():
            plain.commit()
        plain.connection(execution_options={_WRITE_OPTION: True})
    try:
        yield plain
        plain.commit()
    except BaseException:
        plain.rollback()
        raise


_SNAPSHOT = "creditapp.snapshot"


@contextmanager
def snapshot(session: DbSession) -> Iterator[Session]:
    """A read-only transaction in which every query sees the database as of one moment, so that
    sums read one after another agree while others write. Nested use joins the outer snapshot.

    PostgreSQL: REPEATABLE READ READ ONLY, which takes no lock and so slows no writer. SQLite
    (WAL): a deferred read transaction reads one snapshot from its first statement on. Whatever
    transaction the session had open is ended first (rolled back: a snapshot follows writes,
    never carries them).
    """
    plain: Session = session() if isinstance(session, scoped_session) else session
    if plain.info.get(_SNAPSHOT):
        yield plain
        return
    plain.rollback()
    if plain.get_bind().dialect.name == "postgresql":
        plain.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    plain.info[_SNAPSHOT] = True
    try:
        yield plain
    finally:
        plain.info.pop(_SNAPSHOT, None)
        plain.rollback()


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware.

    SQLite has no time zones, so values are stored there as naive UTC; every comparison binds
    through this type, so the stored text and the parameters agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's condition: `column` holds one of `values`."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
