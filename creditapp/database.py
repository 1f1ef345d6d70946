"""Transactions as the ledger needs them, and the one seam where the two databases we run on
differ: PostgreSQL in production, the embedded SQLite file by default. Nothing outside this
module asks which database it talks to; it asks `dialect_of(session)` for what differs.

PostgreSQL runs READ COMMITTED; the ledger's conditional updates and row locks make each
operation safe. SQLite allows one writer at a time: a write transaction starts with
`BEGIN IMMEDIATE` so that it takes the write lock up front instead of failing half way
when it upgrades from reading, and waits for it under `busy_timeout`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.connection import _WAIT_INTERVAL  # the default of the `wait` overridden below
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.types.json import Json
from sqlalchemy import BigInteger, ColumnElement, Date, DateTime, Integer, cast, event, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.types import TypeDecorator

_WRITE_OPTION = "creditapp_write"

# Services take either a plain session or Flask-SQLAlchemy's scoped one (`db.session`).
DbSession = Session | scoped_session[Any]


RV = TypeVar("RV")
# A statement for the driver and its parameters.
Query = tuple[str, tuple[Any, ...]]
# A statement running longer than its `statement_timeout` is cancelled by the server itself; a
# server that stopped answering cannot do even that, so the client gives up this much later.
DEADLINE_MARGIN_SECONDS = 2
# Set on a psycopg pipeline that sent a BEGIN not answered yet (`DeadlineConnection`).
_BEGUN = "creditapp_begun"
# Set while a job or a migration runs: its statements may take this long, 0 for no limit
# (`longer_statements`).
_job_statement_seconds: ContextVar[int | None] = ContextVar("job_statement_seconds", default=None)


class DatabaseDeadlineExceeded(psycopg.OperationalError):
    """The database did not answer a statement or a commit within the deadline: the connection
    is closed, its transaction abandoned, exactly as if the server had gone away. Nothing was
    half written: the server rolls the transaction back when it sees the connection end, or,
    if the commit had reached it, commits it whole."""


class DeadlineCursor(psycopg.Cursor[Any]):
    """The cursor of a `DeadlineConnection`: a transaction's first statement is sent in one
    round trip with the BEGIN before it (psycopg would wait for the BEGIN's answer alone). In
    a pipeline it is one statement (no "A; B" string), as every statement after it already
    was: none of ours is more."""

    def begins_transaction(self) -> bool:
        """Whether a statement executed now begins a transaction, outside a pipeline."""
        info = self.connection.info
        return (
            not self.connection.autocommit
            and info.transaction_status == TransactionStatus.IDLE
            and info.pipeline_status == PipelineStatus.OFF
        )

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if not self.begins_transaction():
            return super().execute(query, params, **kwargs)
        with self.connection.pipeline():
            return self.execute(query, params, **kwargs)  # in the pipeline now: sent with it


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits for each answer at most its statement timeout and a
    margin (for statements sent together, the statement timeout of each, and the margin).

    The server's `statement_timeout` cancels a slow statement, but a server that stopped
    answering (frozen, or behind a proxy that keeps the TCP connection open and forwards
    nothing) cannot, and TCP's own timeouts never fire while the peer acknowledges. Every
    statement, commit and rollback passes through `wait`, so one deadline covers them all.
    """

    statement_timeout_seconds: int = 0
    # The statements whose answers the next wait covers: a pipeline's, each of which may take
    # its statement timeout (`send`).
    _statements_waited_for: int = 1
    # Statements of the transaction in progress not sent yet: they go with the transaction's
    # next statement, or with its COMMIT (`send`). Each with the cursor its result is read from
    # (`creditapp.ledger.sql.Later`), or None for a write whose result nobody reads.
    deferred: list[tuple[Query, psycopg.Cursor[Any] | None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = DeadlineCursor

    def _start_query(self) -> PQGen[None]:
        """Begin a transaction before a statement, if none is open. In a pipeline, psycopg
        would send the BEGIN and wait for its answer before the statement (to learn that a
        transaction is open); here it goes with the pipeline's statements, and the pipeline
        remembers that it began one (its answer comes with theirs, when the pipeline ends).
        Nothing here sends statements after a COMMIT in the same pipeline."""
        pipeline = self._pipeline
        if (
            pipeline is None
            or self.autocommit
            or self.pgconn.transaction_status != TransactionStatus.IDLE
        ):
            yield from super()._start_query()
            return
        if getattr(pipeline, _BEGUN, False):
            return
        yield from self._exec_command(self._get_tx_start_command())
        setattr(pipeline, _BEGUN, True)

    def send(self, queries: Sequence[Query] = (), *, commit: bool = False) -> list[Any]:
        """Send the deferred writes, then `queries`, then COMMIT if asked, in one round trip
        (one pipeline: each statement still runs after the one before it has finished); return
        a cursor holding each query's result. A failure of any of them is raised here, and the
        transaction is then aborted, as if it had failed on its own."""
        deferred, self.deferred = self.deferred, []
        self._statements_waited_for = max(1, len(deferred) + len(queries) + commit)
        try:
            with self.pipeline():
                writes = self.cursor()
                for (sql, params), cursor in deferred:
                    (cursor or writes).execute(sql, params)
                cursors = []
                for sql, params in queries:
                    cursor = self.cursor()
                    cursor.execute(sql, params)
                    cursors.append(cursor)
                if commit:
                    # As a statement, not `commit()`, which would wait for its answer alone.
                    writes.execute("COMMIT")
        finally:
            self._statements_waited_for = 1
        return cursors

    def wait(
        self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        if timeout is not None:  # psycopg's own bounded waits (cancelling a query)
            return super().wait(gen, interval, timeout)
        longer = _job_statement_seconds.get()
        statement_seconds = self.statement_timeout_seconds if longer is None else longer
        if statement_seconds == 0:
            return super().wait(gen, interval, None)
        deadline = statement_seconds * self._statements_waited_for + DEADLINE_MARGIN_SECONDS
        try:
            return super().wait(gen, interval, deadline)
        # psycopg's own exception for its `timeout` (a private name: psycopg is pinned).
        except psycopg.errors._WaitTimeout:
            self.close()
            raise DatabaseDeadlineExceeded(
                f"the database did not answer within {deadline:g} s"
            ) from None


@contextmanager
def longer_statements(seconds: int) -> Iterator[None]:
    """Statements run in this context (a job's, a migration's) may take `seconds` (0: as long
    as they take), not a request's few: each PostgreSQL transaction begun here sets its
    `statement_timeout` (SET LOCAL: nothing outlives the transaction, so PgBouncer's
    transaction pooling stays safe), and the client waits as long."""
    token = _job_statement_seconds.set(seconds)
    try:
        yield
    finally:
        _job_statement_seconds.reset(token)


def configure_engine(engine: Engine, *, statement_timeout_seconds: int) -> None:
    """PostgreSQL: connections with a deadline on every answer, and jobs' longer statements.
    SQLite: the pragmas and the BEGIN IMMEDIATE hook."""
    if engine.dialect.name == "postgresql":
        _configure_postgresql(engine, statement_timeout_seconds)
        return
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


class DeferredWriteFailed(Exception):
    """A deferred write failed as it was sent before an ORM statement or a commit the session
    made: the transaction is aborted. Not a driver's error, so that nothing takes it for the
    failure of the statement that sent it (an ORM insert's IntegrityError read as "a twin was
    first", say). Sent with the ledger's own statements (`DeadlineConnection.send`), it fails
    as the driver's error, which nothing catches as a twin's: the transaction fails whole."""


def _send_deferred(connection: Any) -> None:
    """Send the deferred writes of a SQLAlchemy connection's driver connection, if any."""
    if connection.invalidated:
        return
    driver = connection.connection.driver_connection
    if not driver.deferred:
        return
    try:
        # As every send on the driver's own connection, whichever SQLAlchemy event it is under.
        with lost_connection_invalidated(connection):
            driver.send()
    except psycopg.OperationalError:
        raise  # the database gone, or a timeout: as for any statement (a 503)
    except psycopg.Error as error:
        raise DeferredWriteFailed(str(error)) from error


def _configure_postgresql(engine: Engine, statement_timeout_seconds: int) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect_with_deadline(_dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        connection = DeadlineConnection.connect(*cargs, **cparams)
        connection.statement_timeout_seconds = statement_timeout_seconds
        connection.deferred = []
        return connection

    # Whatever runs next on a connection with deferred writes runs after them.
    @event.listens_for(engine, "before_cursor_execute")
    def _deferred_first(connection, *_statement):  # type: ignore[no-untyped-def]
        _send_deferred(connection)

    @event.listens_for(engine, "commit")
    def _deferred_committed(connection):  # type: ignore[no-untyped-def]
        _send_deferred(connection)

    @event.listens_for(engine, "rollback")
    def _deferred_rolled_back(connection):  # type: ignore[no-untyped-def]
        if not connection.invalidated:  # an invalidated one is never used again
            connection.connection.driver_connection.deferred.clear()

    @event.listens_for(engine, "reset")
    def _deferred_reset(dbapi_connection, _record, _state):  # type: ignore[no-untyped-def]
        dbapi_connection.deferred.clear()

    @event.listens_for(engine, "begin")
    def _job_statement_timeout(connection):  # type: ignore[no-untyped-def]
        seconds = _job_statement_seconds.get()
        if seconds is not None:
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {seconds * 1000}")


@contextmanager
def write_transaction(session: DbSession) -> Iterator[Session]:
    """One short write transaction: commits on success, rolls back on any error.

    On SQLite a read transaction the session has open (for example from loading the caller) is
    ended first, so that the write lock is taken at BEGIN rather than failing on an upgrade. On
    PostgreSQL it simply continues as the write transaction (READ COMMITTED: nothing read
    earlier is relied on as a snapshot), which saves a COMMIT and a BEGIN.
    """
    plain: Session = session() if isinstance(session, scoped_session) else session
    if dialect_of(plain) is SQLITE:
        if plain.in_transaction():
            plain.commit()
        plain.connection(execution_options={_WRITE_OPTION: True})
    try:
        yield plain
        _commit(plain)
    except BaseException:
        plain.rollback()
        raise


@contextmanager
def lost_connection_invalidated(connection: Connection) -> Iterator[None]:
    """Statements sent on the driver's own connection (the ledger's plain SQL, deferred writes)
    whose connection is lost invalidate it, as SQLAlchemy does when its own statement finds it
    lost: the pool replaces it, and the session's rollback has nothing to send (sent on the
    lost connection, it would fail too, and replace the loss with its own failure; a caller
    that rolls back after a database error, the rate limiter's, would fail with it)."""
    try:
        yield
    except Exception as error:
        if connection.invalidated or connection.closed:
            raise  # nothing to invalidate (and asking for its driver would check out another)
        driver = connection.connection.driver_connection
        # psycopg's connection says whether it is lost; SQLite's, in the process, never is.
        if getattr(driver, "broken", False) or getattr(driver, "closed", False):
            connection.invalidate(error)
        raise


def _commit(session: Session) -> None:
    """Commit, sending the transaction's deferred writes (PostgreSQL) with its COMMIT: one
    round trip for both. The session's own pending changes are written first."""
    if session.in_transaction() and dialect_of(session) is POSTGRESQL:
        driver = _driver_of(session)
        if driver.deferred:
            session.flush()  # sends the deferred writes first, if it has anything to write
        if driver.deferred:
            # Then the session's COMMIT finds nothing to commit.
            with lost_connection_invalidated(session.connection()):
                driver.send(commit=True)
    session.commit()


def _driver_of(session: Session) -> DeadlineConnection:
    """The psycopg connection of the session's current transaction."""
    driver = session.connection().connection.driver_connection
    assert isinstance(driver, DeadlineConnection)
    return driver


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
    if dialect_of(plain) is POSTGRESQL:
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


@dataclass(frozen=True)
class DatabaseDialect:
    """What one of the databases we run on does its own way."""

    name: str
    # INSERT with ON CONFLICT DO NOTHING / DO UPDATE (insert-if-new, upsert).
    insert: Callable[[Any], Any]
    # The driver's parameter marker, for statements sent to it directly.
    placeholder: str
    # Rows can be locked (`FOR UPDATE`); SQLite's write transaction locks the whole database.
    locks_rows: bool
    # INSERT and UPDATE inside WITH: a batch can lock, mark, sum and upsert in one statement.
    writes_in_with: bool
    # A timestamp, and a JSON document, as parameters of a statement sent to the driver.
    stored_time: Callable[[datetime | None], Any]
    stored_json: Callable[[dict[str, Any]], Any]
    # The UTC day of a timestamp column (`is_date`: a date column), as something to group by.
    utc_day: Callable[..., ColumnElement[Any]]


def _sqlite_time(value: datetime | None) -> Any:
    # As SQLAlchemy's DateTime stores it: naive UTC text that sorts like time.
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _postgresql_day(column: Any, *, is_date: bool) -> ColumnElement[Any]:
    # Grouped as dates (cheaper than formatting every row); formatted once per group.
    return column if is_date else cast(func.timezone("UTC", column), Date)


def _sqlite_day(column: Any, *, is_date: bool) -> ColumnElement[Any]:
    # Dates and timestamps are both stored as text starting with "YYYY-MM-DD".
    return func.substr(column, 1, 10)


POSTGRESQL = DatabaseDialect(
    name="postgresql",
    insert=postgresql.insert,
    placeholder="%s",
    locks_rows=True,
    writes_in_with=True,
    stored_time=lambda value: value,
    stored_json=Json,
    utc_day=_postgresql_day,
)
SQLITE = DatabaseDialect(
    name="sqlite",
    insert=sqlite.insert,
    placeholder="?",
    locks_rows=False,
    writes_in_with=False,
    stored_time=_sqlite_time,
    stored_json=json.dumps,
    utc_day=_sqlite_day,
)
DIALECTS = (POSTGRESQL, SQLITE)
_BY_NAME = {dialect.name: dialect for dialect in DIALECTS}


def dialect_of(talking: DbSession | Connection) -> DatabaseDialect:
    """What differs on the database a session, or a connection, talks to."""
    dialect = talking.dialect if isinstance(talking, Connection) else talking.get_bind().dialect
    return _BY_NAME[dialect.name]


def read_time(value: Any) -> datetime | None:
    """A timestamp as the driver returns it (a datetime, or SQLite's text), aware, in UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
