"""The ledger's statements, run as plain SQL on the session's own database connection.

Why not SQLAlchemy Core here: the ledger runs ten statements per hold+settle, and executing a
Core statement costs about three times the CPU of the driver's cursor. With several threads
per process that CPU is serialized, and on a hot account it stretches the time a row lock is
held. So the ledger speaks SQL to the driver directly, inside the transaction the session
opened (and commits); what differs between the databases (the parameter marker, row locks,
how timestamps and JSON are passed) comes from `creditapp.database.dialect_of`. The schema
itself stays defined by the models and migrations.

The metered call's other statements (its Idempotency-Key, usage record and chat messages) run
here too, and so do the reads every request makes of who is calling (`LedgerSql.instances`:
its API key and owner, or its signed-in user), which the ORM would read for twice the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, set_committed_value

from creditapp.database import (
    DIALECTS,
    POSTGRESQL,
    DbSession,
    Query,
    dialect_of,
    lost_connection_invalidated,
)

_NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class Statement:
    """SQL written with `:name` parameters; `lock` is a row-locking clause, where rows lock;
    `expressions` what a `{name}` in it is on each database.

    Parameters are bound by position (psycopg would otherwise reorder a dict on every call):
    each database's expressions name the same parameters, in the same order.
    """

    def __init__(
        self, sql: str, *, lock: str = "", expressions: dict[str, dict[str, str]] | None = None
    ):
        texts = {dialect.name: " ".join(sql.split()) for dialect in DIALECTS}
        for name, each in (expressions or {}).items():
            texts = {
                dialect: text.replace(f"{{{name}}}", each[dialect])
                for dialect, text in texts.items()
            }
        (self.names,) = {tuple(_NAMED_PARAMETER.findall(text)) for text in texts.values()}
        self.sql = {
            dialect.name: _NAMED_PARAMETER.sub(dialect.placeholder, texts[dialect.name])
            + (f" {lock}" if lock and dialect.locks_rows else "")
            for dialect in DIALECTS
        }

    def values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


class LedgerSql:
    """Runs statements on the connection of the session's current transaction.

    On PostgreSQL a write whose result is not read (`run`, `run_many`) is deferred: it is sent
    with the transaction's next statement, whichever runs it, or with its COMMIT
    (`creditapp.database.DeadlineConnection.send`), so that a ledger operation's writes cost one
    round trip, not one each. Nothing reads around them: every statement still runs in order.
    On SQLite, in the process, every statement runs at once.
    """

    def __init__(self, session: DbSession):
        self._connection = session.connection()
        self._session = session
        self._dialect = dialect_of(self._connection)
        # A `creditapp.database.DeadlineConnection` on PostgreSQL.
        self._driver = cast(Any, self._connection.connection.driver_connection)
        self._cursor = self._driver.cursor()
        self._deferring = self._dialect is POSTGRESQL

    def _query(self, statement: Statement, params: dict[str, Any]) -> Query:
        return statement.sql[self._dialect.name], statement.values(params)

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Any:
        with lost_connection_invalidated(self._connection):
            if self._deferring and self._driver.deferred:
                return self._driver.send([self._query(statement, params)])[0]
            self._cursor.execute(*self._query(statement, params))
            return self._cursor

    def one(self, statement: Statement, **params: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._execute(statement, params).fetchone()
        return row

    def all(self, statement: Statement, **params: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._execute(statement, params).fetchall()
        return rows

    def together(self, *queries: tuple[Statement, dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """The rows of each query, run one after the other and sent together (one round trip on
        PostgreSQL): for queries none of which needs another's result to be written."""
        if self._deferring:
            with lost_connection_invalidated(self._connection):
                cursors = self._driver.send([self._query(*query) for query in queries])
            return [cursor.fetchall() for cursor in cursors]
        return [self.all(statement, **params) for statement, params in queries]

    def later(self, statement: Statement, **params: Any) -> Later:
        """A query sent with the transaction's next round trip (PostgreSQL), its rows read
        when needed: for one whose result is needed after the statements that follow it."""
        if not self._deferring:
            return Later(self.all(statement, **params))
        cursor = self._driver.cursor()
        self._driver.deferred.append((self._query(statement, params), cursor))
        return Later(cursor, self._send_deferred)

    def _send_deferred(self) -> None:
        with lost_connection_invalidated(self._connection):
            self._driver.send()

    def new_id(self, table: str) -> Later | None:
        """PostgreSQL: the next id of `table`, taken with the transaction's next round trip, so
        that `insert` needs not read it back; None on SQLite, where `insert` reads it back."""
        if not self._deferring:
            return None
        return self.later(_NEXT_ID[table])

    def insert(self, statement: Statement, new_id: Later | None, **params: Any) -> int:
        """Insert a row whose id is `new_id`'s (a deferred write), or read back (`new_id`
        None). `statement` inserts `:id` and returns the row's id."""
        if new_id is None:
            row = self.one(statement, id=None, **params)
            assert row is not None
            return int(row[0])
        row_id = int(new_id.rows()[0][0])
        self.run(statement, id=row_id, **params)
        return row_id

    def run(self, statement: Statement, **params: Any) -> None:
        if self._deferring:
            self._driver.deferred.append((self._query(statement, params), None))
            return
        self._cursor.execute(*self._query(statement, params))

    def run_many(self, statement: Statement, rows: list[dict[str, Any]]) -> None:
        # Deferred, each row goes with the rest of the transaction's writes; here executemany
        # costs more for a single row.
        if self._deferring or len(rows) == 1:
            for row in rows:
                self.run(statement, **row)
            return
        self._cursor.executemany(
            statement.sql[self._dialect.name], [statement.values(row) for row in rows]
        )

    def time(self, value: datetime | None) -> Any:
        """A timestamp as this database takes it."""
        return self._dialect.stored_time(value)

    def json(self, value: dict[str, Any]) -> Any:
        return self._dialect.stored_json(value)

    def instances(self, statement: Statement, models: tuple[type, ...], **params: Any) -> Any:
        """The first row of `statement`, which selects `columns_of` each of `models` in turn, as
        the session's instances of them (a tuple; None without a row): the ones the session
        holds already, else new ones added to it, as an ORM query gives them, for about half
        its CPU. For a read every request makes (its API key and owner, its signed-in user)."""
        session = self._session
        if session.autoflush and (session.new or session.dirty or session.deleted):
            session.flush()  # as before an ORM query: it reads the session's changes
        row = self.one(statement, **params)
        if row is None:
            return None
        found, start = [], 0
        dialect = self._connection.dialect
        for model in models:
            loading = _Loading.of(model, dialect)
            found.append(loading.instance(session, row[start : start + loading.width]))
            start += loading.width
        return tuple(found)


def columns_of(model: type, alias: str) -> str:
    """Every column of `model`'s table, as `LedgerSql.instances` reads them."""
    mapper: Mapper[Any] = inspect(model)
    return ", ".join(f"{alias}.{column.name}" for column in mapper.local_table.columns)


class _Loading:
    """How a model's row becomes its instance on one database: each column's attribute, and
    how its value is read (the column type's own result processor; None: as the driver gives
    it). For a model whose primary key is one column."""

    _known: dict[tuple[type, Any], _Loading] = {}  # by model and dialect (its JSON reader, say)

    def __init__(self, model: type, dialect: Any):
        configure_mappers()  # what the ORM does before its first query: instances need it
        self.mapper: Mapper[Any] = inspect(model)
        columns = self.mapper.local_table.columns
        self.keys = tuple(self.mapper.get_property_by_column(column).key for column in columns)
        self.reads = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        self.width = len(self.keys)
        (identity,) = self.mapper.primary_key
        self.identity = self.keys.index(self.mapper.get_property_by_column(identity).key)

    @classmethod
    def of(cls, model: type, dialect: Any) -> _Loading:
        loading = cls._known.get((model, dialect))
        if loading is None:
            loading = cls._known[(model, dialect)] = cls(model, dialect)
        return loading

    def instance(self, session: DbSession, values: tuple[Any, ...]) -> Any:
        loaded = [
            value if read is None else read(value)
            for read, value in zip(self.reads, values, strict=True)
        ]
        identity = self.mapper.identity_key_from_primary_key((loaded[self.identity],))
        held = session.identity_map.get(identity)
        if held is not None:  # as an ORM query: what it holds is kept, what it expired read
            unloaded = inspect(held).unloaded
            for key, value in zip(self.keys, loaded, strict=True):
                if key in unloaded:
                    set_committed_value(held, key, value)
            return held
        instance = self.mapper.class_manager.new_instance()
        instance_dict(instance).update(zip(self.keys, loaded, strict=True))
        make_transient_to_detached(instance)  # every attribute loaded, none changed
        session.add(instance)
        return instance


class Later:
    """The rows of a query `LedgerSql.later` sent, or will send, with another round trip."""

    def __init__(self, result: Any, send: Callable[[], None] | None = None) -> None:
        self._result = result  # the rows, or the cursor they arrive on
        self._send = send  # sends what is deferred, the query with it

    def rows(self) -> list[tuple[Any, ...]]:
        if isinstance(self._result, list):
            return self._result
        if self._result.pgresult is None:  # not sent yet: nothing went since
            assert self._send is not None, "a query to send comes with what sends it"
            self._send()
        rows: list[tuple[Any, ...]] = self._result.fetchall()
        return rows


# The next id of each table whose rows `LedgerSql.insert` writes with ids taken first.
_NEXT_ID = {
    table: Statement(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
    for table in ("usage_records",)
}

_ACCOUNT_ROW = (
    "SELECT balance, reserved, last_seq, last_entry_at, watched FROM accounts WHERE id = :account"
)
# The lock an UPDATE of the balance takes anyway, not FOR UPDATE: that one would also wait for
# the KEY SHARE lock of every row inserted with a foreign key to the account, and a transaction
# that wrote such a row before its ledger operation (a refund's compensation) would deadlock
# with another doing the same.
LOCK_ACCOUNT = Statement(_ACCOUNT_ROW, lock="FOR NO KEY UPDATE")
READ_ACCOUNT = Statement(_ACCOUNT_ROW)
_LIVE_GRANTS = """SELECT id, remaining, expires_at, source FROM grants
                  WHERE account_id = {account} AND remaining > 0
                  ORDER BY expires_at ASC NULLS LAST, created_at, id"""
LIVE_GRANTS = Statement(_LIVE_GRANTS.format(account=":account"))
# A hold this resolution has just resolved (RESOLVE_HOLD marked the transaction with the
# resolution's own `:resolution` when, and only when, it changed the row: a hold resolved
# before, even at the same instant, is not), whose account can be locked with the resolution,
# in its round trip: one without spending caps, or one whose caps count its charge first
# (within its amount, which they reserved: see COUNT_RESOLVED_HOLDS_CAPS). Any other gives no
# row: a capped hold charged beyond its amount (its caps must first say how much room they
# have), one resolved before or settled late (its account is locked after it, as always).
# SQLite, in the process, gains nothing from this: no row there.
_JUST_RESOLVED = "FROM holds WHERE id = :hold AND {resolved_now}"
_RESOLVED_NOW = {
    "resolved_now": {
        "postgresql": "current_setting('creditapp.resolution', true) = :resolution",
        "sqlite": ":resolution IS NULL",
    }
}
_RESOLVED_HOLDS_ACCOUNT = (
    f"(SELECT account_id {_JUST_RESOLVED} AND (NOT capped OR amount >= :actual))"
)
LOCK_RESOLVED_HOLDS_ACCOUNT = Statement(
    _ACCOUNT_ROW.replace(":account", _RESOLVED_HOLDS_ACCOUNT),
    lock="FOR NO KEY UPDATE",
    expressions=_RESOLVED_NOW,
)
RESOLVED_HOLDS_LIVE_GRANTS = Statement(
    _LIVE_GRANTS.format(account=_RESOLVED_HOLDS_ACCOUNT), expressions=_RESOLVED_NOW
)
RESERVE = Statement(
    """UPDATE accounts SET reserved = reserved + :amount
       WHERE id = :account AND balance - reserved >= :amount
         AND NOT EXISTS (SELECT 1 FROM grants WHERE grants.account_id = accounts.id
                         AND grants.remaining > 0 AND grants.expires_at <= :now)
       RETURNING balance, reserved, watched"""
)
STORE_ACCOUNT = Statement(
    """UPDATE accounts SET balance = :balance, reserved = :reserved, last_seq = :last_seq,
              last_entry_at = :last_entry_at
       WHERE id = :account"""
)
CHANGE_GRANT = Statement("UPDATE grants SET remaining = remaining + :change WHERE id = :grant")
# Resolves a pending hold, charging min(actual, hold) for now: what the account can pay above
# the hold is known only once the account is locked (RECORD_CAPTURE then corrects it).
RESOLVE_HOLD = Statement(
    """UPDATE holds SET status = :status, resolved_at = :now,
              captured = CASE WHEN :actual < amount THEN :actual ELSE amount END,
              uncollected = CASE WHEN :actual < amount THEN 0 ELSE :actual - amount END
       WHERE id = :hold AND status = 'pending' AND (:status <> 'expired' OR expires_at <= :now)
       RETURNING account_id, amount, reference, capped, user_id, created_at, {mark}""",
    # The transaction is marked as the one that resolved the hold, for the statements sent
    # with this one (_RESOLVED_NOW): set only for a row this statement changed, until the
    # transaction ends.
    expressions={
        "mark": {
            "postgresql": "set_config('creditapp.resolution', :resolution, true)",
            "sqlite": ":resolution",
        }
    },
)
# A settle that finds its hold expired still charges the call: the hold becomes settled (once),
# and the charge comes from what is available now, since the expiry released the reservation.
SETTLE_EXPIRED_HOLD = Statement(
    """UPDATE holds SET status = 'settled', resolved_at = :now
       WHERE id = :hold AND status = 'expired'
       RETURNING account_id, amount, reference, capped, user_id"""
)
RECORD_CAPTURE = Statement(
    "UPDATE holds SET captured = :captured, uncollected = :uncollected WHERE id = :hold"
)
# Around what an operation writes before it knows whether it is refused (`_refusable`).
REFUSABLE = Statement("SAVEPOINT ledger_refusable")
REFUSED = Statement("ROLLBACK TO SAVEPOINT ledger_refusable")
NOT_REFUSED = Statement("RELEASE SAVEPOINT ledger_refusable")
# An account's open holds, for what they claim of grants that expired after they were placed
# (only read when the account has such grants).
OPEN_HOLDS = Statement(
    "SELECT created_at, amount FROM holds WHERE account_id = :account AND resolved_at IS NULL"
)
HOLD_STATE = Statement("SELECT status, captured, uncollected FROM holds WHERE id = :hold")
PERIOD_GRANT = Statement("SELECT id FROM grants WHERE account_id = :account AND period = :period")
# A subscription grant of a period that ends after `:end` (spent or not).
LATER_PERIOD_GRANT = Statement(
    """SELECT id FROM grants
       WHERE account_id = :account AND source = 'subscription' AND expires_at > :end
       LIMIT 1"""
)
OVERDUE_HOLDS = Statement(
    """SELECT id FROM holds WHERE resolved_at IS NULL AND expires_at <= :now
       ORDER BY expires_at LIMIT :limit"""
)
EXPIRED_CREDIT_ACCOUNTS = Statement(
    """SELECT DISTINCT account_id FROM grants
       WHERE expires_at <= :now AND remaining > 0 AND account_id > :after
       ORDER BY account_id LIMIT :limit"""
)
BALANCE_AS_OF = Statement(
    """SELECT balance, reserved,
              (SELECT COALESCE(SUM(remaining), 0) FROM grants
               WHERE account_id = :account AND remaining > 0 AND expires_at <= :now)
       FROM accounts WHERE id = :account"""
)
INSERT_ACCOUNT = Statement(
    """INSERT INTO accounts (user_id, team_id, balance, reserved, last_seq, created_at)
       VALUES (:user, :team, 0, 0, NULL, :now) RETURNING id"""
)
INSERT_GRANT = Statement(
    """INSERT INTO grants (account_id, source, amount, remaining, expires_at, period, reason,
                          created_at)
       VALUES (:account, :source, :amount, 0, :expires_at, :period, :reason, :now)
       RETURNING id"""
)
INSERT_HOLD = Statement(
    """INSERT INTO holds (account_id, amount, status, uncollected, reference, expires_at,
                         created_at, capped, user_id)
       VALUES (:account, :amount, 'pending', 0, :reference, :expires_at, :now, :capped, :user)
       RETURNING id"""
)

# Spending caps. A cap's period starts again lazily: the first statement to touch it in a new
# period counts its spending from zero. Every start a cap may have is passed in (`:day`, `:week`,
# `:month`, `:ever`), so that no statement needs a read of the cap's period first.
_PERIOD_START = """(CASE period WHEN 'day' THEN :day WHEN 'week' THEN :week
                   WHEN 'month' THEN :month ELSE :ever END)"""
# A statement given an older `now` than the cap's (a clock behind another's, a lock waited
# for) never moves the period back: it counts in the cap's newer period.
_SPENT_THIS_PERIOD = f"(CASE WHEN period_start >= {_PERIOD_START} THEN spent ELSE 0 END)"
_NEWEST_START = (
    f"(CASE WHEN period_start >= {_PERIOD_START} THEN period_start ELSE {_PERIOD_START} END)"
)
INSERT_CAP = Statement(
    """INSERT INTO spend_caps (account_id, kind, ceiling, period, period_start, spent, reserved,
                             created_at)
       VALUES (:account, :kind, :ceiling, :period, :start, 0, 0, :now) RETURNING id"""
)
# The conditional update of a hold, as for the account: no row means the cap would be passed.
RESERVE_CAP = Statement(
    f"""UPDATE spend_caps SET spent = {_SPENT_THIS_PERIOD}, period_start = {_NEWEST_START},
              reserved = reserved + :amount
       WHERE id = :cap AND closed_at IS NULL
         AND (ceiling IS NULL OR {_SPENT_THIS_PERIOD} + reserved + :amount <= ceiling)
       RETURNING id"""
)
INSERT_HOLD_CAP = Statement("INSERT INTO hold_caps (hold_id, cap_id) VALUES (:hold, :cap)")
# A resolved hold's reservation leaves its caps (`:released`, 0 for a late settle, whose hold
# released it when it expired) and what it captured counts as spent in the current period.
# Its caps are locked in id order, as a hold takes them (RESERVE_CAP), and as strongly as the
# UPDATE locks them (a new hold's hold_caps row can still reference them): the UPDATE alone
# locks rows in the order its plan finds them (a sequential scan: the table's physical order,
# which every update changes), and a settle and a hold of the same spender deadlocked.
_COUNT_IN_CAPS = f"""UPDATE spend_caps SET spent = {_SPENT_THIS_PERIOD} + {{captured}},
                           period_start = {_NEWEST_START}, reserved = reserved - {{released}}
                    {{source}} WHERE id IN {{{{caps_in_id_order}}}} RETURNING period_start"""
_CAPS_IN_ID_ORDER = {
    "caps_in_id_order": {
        "postgresql": "(SELECT id FROM spend_caps"
        " WHERE id IN (SELECT cap_id FROM hold_caps WHERE hold_id = :hold)"
        " ORDER BY id FOR NO KEY UPDATE)",
        # One writer at a time: no row locks, and no order to keep.
        "sqlite": "(SELECT cap_id FROM hold_caps WHERE hold_id = :hold)",
    }
}
RESOLVE_CAPS = Statement(
    _COUNT_IN_CAPS.format(captured=":captured", released=":released", source=""),
    expressions=_CAPS_IN_ID_ORDER,
)
# RESOLVE_CAPS for a capped hold this transaction has just resolved within its amount (it
# releases its whole reservation and captures `:actual`), sent with the resolution, before its
# account's lock (LOCK_RESOLVED_HOLDS_ACCOUNT): caps before the account, as a hold takes them.
COUNT_RESOLVED_HOLDS_CAPS = Statement(
    _COUNT_IN_CAPS.format(
        captured=":actual",
        released="resolved.amount",
        source=f"FROM (SELECT amount {_JUST_RESOLVED} AND capped AND amount >= :actual)"
        " AS resolved",
    ),
    expressions={**_RESOLVED_NOW, **_CAPS_IN_ID_ORDER},
)
# A resolution counted in a cap's period that began after the resolution's clock read (it
# waited for the account's lock meanwhile) is dated from that period's start: what a cap spent
# in a period is what its holds resolved since the period began captured, to the microsecond.
DATE_RESOLUTION = Statement("UPDATE holds SET resolved_at = :at WHERE id = :hold")
# What a resolving hold may capture beyond what it releases, by each of its caps (NULL: no
# ceiling). Every one of its caps is locked, in id order, before the account is: RESOLVE_CAPS
# follows in the same transaction.
CAP_ROOM = Statement(
    f"""SELECT ceiling - {_SPENT_THIS_PERIOD} - reserved FROM spend_caps
       WHERE id IN (SELECT cap_id FROM hold_caps WHERE hold_id = :hold) ORDER BY id""",
    lock="FOR UPDATE",
)
# The first refusal by a cap in its current period marks it signalled (later ones find it so).
REFUSAL_SIGNALLED = Statement(
    f"""UPDATE spend_caps SET reached_signalled_for = {_PERIOD_START}
       WHERE id = :cap
         AND (reached_signalled_for IS NULL OR reached_signalled_for < {_PERIOD_START})
       RETURNING kind, account_id, ceiling, period,
                 (SELECT id FROM api_keys WHERE api_keys.cap_id = spend_caps.id),
                 (SELECT user_id FROM team_members WHERE team_members.cap_id = spend_caps.id)"""
)
CAP_STANDING = Statement(
    f"""SELECT kind, ceiling, {_SPENT_THIS_PERIOD}, reserved, closed_at FROM spend_caps
       WHERE id = :cap"""
)
CLOSE_CAP = Statement(
    "UPDATE spend_caps SET closed_at = :now WHERE id = :cap AND closed_at IS NULL"
)
# A new ceiling may be reached again: its first refusal is announced, even in this period.
SET_CEILING = Statement(
    "UPDATE spend_caps SET ceiling = :ceiling, reached_signalled_for = NULL WHERE id = :cap"
)
LOCK_CAP = Statement("SELECT period FROM spend_caps WHERE id = :cap", lock="FOR UPDATE")
# A cap counted per another period from now on: what it spent in the new period so far is what
# its settled holds captured since that period began (the cap row is locked first, so that a
# resolution committed meanwhile is seen; one still running adds its capture after this).
SET_PERIOD = Statement(
    """UPDATE spend_caps SET period = :period, period_start = :start,
              spent = (SELECT COALESCE(SUM(holds.captured), 0) FROM holds
                       JOIN hold_caps ON hold_caps.hold_id = holds.id
                       WHERE hold_caps.cap_id = :cap AND holds.status = 'settled'
                         AND holds.resolved_at >= :start)
       WHERE id = :cap"""
)
INSERT_AUDIT = Statement(
    """INSERT INTO audit_records (actor_type, actor_id, action, account_id, balance_before,
                                 balance_after, reserved_before, reserved_after, request_id,
                                 client_ip, details, created_at)
       VALUES (:actor_type, :actor_id, :action, :account, :balance_before, :balance_after,
               :reserved_before, :reserved_after, :request_id, :client_ip, :details, :now)"""
)
# What the claw-backs of a reference took, per grant, newest first, with the grant's expiry.
CLAWED_BACK = Statement(
    """SELECT -e.amount, g.expires_at FROM ledger_entries e JOIN grants g ON g.id = e.grant_id
       WHERE e.account_id = :account AND e.reference = :reference AND e.type = 'adjust'
         AND e.amount < 0
       ORDER BY e.seq DESC"""
)
INSERT_ENTRY = Statement(
    """INSERT INTO ledger_entries (account_id, seq, prev_seq, type, amount, balance_before,
                                  balance_after, grant_id, hold_id, audit_id, reference,
                                  request_id, user_id, created_at)
       VALUES (:account, :seq, :prev_seq, :type, :amount, :balance_before, :balance_after,
               :grant, :hold, {last_audit_id}, :reference, :request_id, :user, :now)""",
    # The audit record the operation wrote just before (`_persist`): its id is not read back,
    # so that the audit record is a deferred write too. Only this transaction writes audit
    # records on SQLite now (it holds the write lock).
    expressions={
        "last_audit_id": {
            "postgresql": "currval(pg_get_serial_sequence('audit_records', 'id'))",
            "sqlite": "(SELECT max(id) FROM audit_records)",
        }
    },
)
