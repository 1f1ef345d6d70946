"""The migrations build exactly the schema the models describe, on both databases, and carry a
live database's rows across: each test below migrates a database of its own (the suite's stays
at head), filled the way the previous release left it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import check
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from creditapp import MIGRATIONS_DIR, accounts, create_app, ledger
from creditapp.config import sqlalchemy_url
from creditapp.extensions import db
from tests.conftest import BACKEND, PG_ADMIN_URL


def test_models_and_migrations_agree(app: Flask) -> None:
    with app.app_context():
        check(directory=str(MIGRATIONS_DIR))  # raises if autogenerate would add anything


# A database of the release before 0009 (many doors), as its code left it.

BEFORE_DOORS = "0008"
# The newest revision: the upgrades below go all the way, as a release's would.
HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
MANY_DOORS = "0009"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
USER, OTHER_USER = 7, 12
ACCOUNT, OTHER_ACCOUNT = 3, 5  # ids that are not the users' own: each must be kept as it is
GRANTED, CHARGED, PENDING = 10_000_000, 1_500_000, 1_000_000
# Tables whose rows the migrations must carry over unchanged (0009 changes columns of the first
# three: they are rebuilt on SQLite), compared on the columns of 0008.
KEPT_TABLES = (
    "accounts",
    "usage_records",
    "unbilled_usage",
    "users",
    "grants",
    "holds",
    "ledger_entries",
    "audit_records",
    "conversations",
    "messages",
    "compensations",
)
REBUILT_TABLES = ("accounts", "usage_records", "unbilled_usage", "idempotency_keys")


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rows_0008() -> dict[str, list[dict[str, Any]]]:
    """A user who was granted 10 credits, chatted once (charged 1.5), has a call in flight
    (1 reserved), one whose settle failed (unbilled) and a refund pending, and retried a request
    with an Idempotency-Key; and a user who never spent anything. Inserted in this order."""
    audit = {"actor_id": None, "request_id": None, "client_ip": None, "details": {}}
    return {
        "users": [
            {
                "id": user_id,
                "email": f"user{user_id}@example.com",
                "role": "user",
                "tier_name": "free",
                "period_anchor": T0,
                "created_at": T0,
                "google_sub": None,
            }
            for user_id in (USER, OTHER_USER)
        ],
        # The balance names its newest entry (a deferred key, checked at commit).
        "accounts": [
            {
                "id": ACCOUNT,
                "user_id": USER,
                "balance": GRANTED - CHARGED,
                "reserved": PENDING,
                "last_seq": 2,
                "last_entry_at": at(3),
                "created_at": T0,
            },
            {
                "id": OTHER_ACCOUNT,
                "user_id": OTHER_USER,
                "balance": 0,
                "reserved": 0,
                "last_seq": None,
                "last_entry_at": None,
                "created_at": T0,
            },
        ],
        "audit_records": [
            {
                **audit,
                "id": 1,
                "actor_type": "system",
                "action": "grant",
                "account_id": ACCOUNT,
                "balance_before": 0,
                "balance_after": GRANTED,
                "reserved_before": 0,
                "reserved_after": 0,
                "created_at": at(1),
            },
            {
                **audit,
                "id": 2,
                "actor_type": "user",
                "action": "settle",
                "account_id": ACCOUNT,
                "balance_before": GRANTED,
                "balance_after": GRANTED - CHARGED,
                "reserved_before": 2_000_000,
                "reserved_after": 0,
                "created_at": at(3),
            },
        ],
        "grants": [
            {
                "id": 1,
                "account_id": ACCOUNT,
                "source": "promo",
                "amount": GRANTED,
                "remaining": GRANTED - CHARGED,
                "expires_at": None,
                "period": None,
                "reason": "welcome",
                "created_at": at(1),
            }
        ],
        "holds": [
            {
                "id": hold_id,
                "account_id": ACCOUNT,
                "amount": amount,
                "status": status,
                "captured": captured,
                "uncollected": 0,
                "reference": f"call {hold_id}",
                "expires_at": at(12),
                "created_at": at(2),
                "resolved_at": None if status == "pending" else at(3),
            }
            for hold_id, amount, status, captured in (
                (1, 2_000_000, "settled", CHARGED),
                (2, PENDING, "pending", None),
                (3, 500_000, "voided", 0),
            )
        ],
        "ledger_entries": [
            {
                "id": 1,
                "account_id": ACCOUNT,
                "seq": 1,
                "prev_seq": None,
                "type": "grant",
                "amount": GRANTED,
                "balance_before": 0,
                "balance_after": GRANTED,
                "grant_id": 1,
                "hold_id": None,
                "audit_id": 1,
                "reference": None,
                "request_id": None,
                "created_at": at(1),
            },
            {
                "id": 2,
                "account_id": ACCOUNT,
                "seq": 2,
                "prev_seq": 1,
                "type": "charge",
                "amount": -CHARGED,
                "balance_before": GRANTED,
                "balance_after": GRANTED - CHARGED,
                "grant_id": 1,
                "hold_id": 1,
                "audit_id": 2,
                "reference": "call 1",
                "request_id": "req-1",
                "created_at": at(3),
            },
        ],
        "prices": [
            {
                "id": 1,
                "provider": "demo",
                "model": "demo-1",
                "effective_from": at(-60),
                "input": 1_000_000,
                "cached_input": None,
                "cache_write": None,
                "output": 2_000_000,
                "prompt_tiers": None,
                "source": "tests",
                "created_at": at(-60),
            }
        ],
        "characters": [
            {
                "id": 1,
                "owner_id": USER,
                "name": "Tutor",
                "system_prompt": "Answer briefly.",
                "provider": "demo",
                "model": "demo-1",
                "public": False,
                "created_at": T0,
            }
        ],
        "conversations": [{"id": 1, "user_id": USER, "character_id": 1, "created_at": at(2)}],
        "usage_records": [{**usage(hold_id=1), "credits_charged": CHARGED}],
        "unbilled_usage": [{**usage(hold_id=3), "error": "the settle failed"}],
        "messages": [
            {
                "id": message_id,
                "conversation_id": 1,
                "role": role,
                "content": content,
                "usage_id": usage_id,
                "created_at": at(3),
            }
            for message_id, role, content, usage_id in (
                (1, "user", "Hi", None),
                (2, "assistant", "Hi!", 1),
            )
        ],
        "compensations": [
            {
                "id": 1,
                "account_id": ACCOUNT,
                "usage_id": 1,
                "amount": 500_000,
                "reason": "a reply cut short",
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": at(4),
                "last_error": None,
                "requested_by": "admin:1",
                "created_at": at(4),
                "completed_at": None,
            }
        ],
        "idempotency_keys": [
            {
                "id": 1,
                "user_id": USER,
                "key": "retry-1",
                "fingerprint": "f" * 64,
                "status": "completed",
                "claim_token": "c" * 32,
                "response_status": 201,
                "response_body": b'{"ok": true}',
                "response_content_type": "application/json",
                "claimed_at": at(2),
                "expires_at": at(2) + timedelta(days=1),
            }
        ],
    }


def usage(*, hold_id: int) -> dict[str, Any]:
    return {
        "id": 1,
        "user_id": USER,
        "account_id": ACCOUNT,
        "conversation_id": 1,
        "hold_id": hold_id,
        "price_id": 1,
        "provider": "demo",
        "model": "demo-1",
        "input_tokens": 100,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 50,
        "reasoning_tokens": 0,
        "estimated": False,
        "cost": CHARGED,
        "created_at": at(3),
    }


# Helpers


@pytest.fixture
def own_database(app: Flask, tmp_path: Path) -> Iterator[Flask]:
    """The app (built by `create_app`, so with its own engine settings: SQLite's foreign keys
    on) on an empty database of its own."""
    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrated.db'}"
        name = None
    else:
        name = f"creditapp_migrations_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrated = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    # create_app made its Celery the default one: tasks must keep meeting the suite's app.
    app.extensions["celery"].set_default()
    try:
        yield migrated
    finally:
        with migrated.app_context():
            db.session.remove()
            db.engine.dispose()
        if name:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(app: Flask, revision: str) -> None:
    """`flask db upgrade`, but raising the migration's error (Flask-Migrate turns it into a
    log line and an exit)."""
    with app.app_context():
        command.upgrade(app.extensions["migrate"].migrate.get_config(), revision)


def downgrade(app: Flask, revision: str) -> None:
    with app.app_context():
        command.downgrade(app.extensions["migrate"].migrate.get_config(), revision)


def engine_of(app: Flask) -> Engine:
    with app.app_context():
        return db.engine


def current_revision(app: Flask) -> str:
    with engine_of(app).connect() as connection:
        return str(connection.scalar(sa.text("SELECT version_num FROM alembic_version")))


def insert(connection: Connection, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Rows through the schema the database has now (its reflected column types bind them)."""
    tables = sa.MetaData()
    tables.reflect(connection, only=list(rows))
    for table, values in rows.items():
        connection.execute(tables.tables[table].insert(), values)


def columns(engine: Engine, table: str) -> list[str]:
    return [column["name"] for column in sa.inspect(engine).get_columns(table)]


def snapshot(engine: Engine, tables: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables, as stored, on the columns named."""
    with engine.connect() as connection:
        return {
            table: [
                tuple(row)
                for row in connection.exec_driver_sql(
                    f"SELECT {', '.join(names)} FROM {table} ORDER BY id"
                )
            ]
            for table, names in tables.items()
        }


def constraint_names(engine: Engine, table: str) -> set[str]:
    inspector = sa.inspect(engine)
    found = (
        inspector.get_check_constraints(table)
        + inspector.get_unique_constraints(table)
        + inspector.get_foreign_keys(table)
    )
    return {constraint["name"] for constraint in found if constraint["name"]}


def assert_keys_hold(engine: Engine) -> None:
    """Every foreign key points at a row, and the database enforces them again."""
    with engine.connect() as connection:
        if BACKEND == "sqlite":
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
            # The migration's connection went back to the pool with its foreign keys on.
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            # The deferred keys (an account's balance names its newest entry), checked now.
            connection.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
            not_validated = connection.exec_driver_sql(
                "SELECT conname FROM pg_constraint WHERE NOT convalidated"
            ).fetchall()
            assert not_validated == []
            connection.rollback()
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO grants (account_id, source, amount, remaining, created_at)"
            " VALUES (999, 'promo', 1, 1, '2026-12-01 00:00:00')"
        )


def assert_chains_whole(engine: Engine) -> None:
    """Each account's balance is its newest entry's balance_after."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT a.id, a.balance, e.balance_after FROM accounts a"
            " LEFT JOIN ledger_entries e ON e.account_id = a.id AND e.seq = a.last_seq"
            " ORDER BY a.id"
        ).fetchall()
    assert [tuple(row) for row in rows] == [
        (ACCOUNT, GRANTED - CHARGED, GRANTED - CHARGED),
        (OTHER_ACCOUNT, 0, None),
    ]


@pytest.fixture
def filled_0008(own_database: Flask) -> Flask:
    """The database at 0008, with the previous release's rows."""
    upgrade(own_database, BEFORE_DOORS)
    with engine_of(own_database).begin() as connection:
        insert(connection, rows_0008())
    return own_database


# The tests


def test_upgrade_to_many_doors_keeps_every_account_and_its_chain(filled_0008: Flask) -> None:
    engine = engine_of(filled_0008)
    kept = {table: columns(engine, table) for table in KEPT_TABLES}
    before = snapshot(engine, kept)
    constraints_before = {table: constraint_names(engine, table) for table in REBUILT_TABLES}
    assert_keys_hold(engine)

    upgrade(filled_0008, HEAD)

    assert current_revision(filled_0008) == HEAD
    assert snapshot(engine, kept) == before  # ids, owners, balances, entries: as they were
    assert_chains_whole(engine)
    assert_keys_hold(engine)
    with engine.connect() as connection:
        keys = connection.exec_driver_sql("SELECT id, scope, key FROM idempotency_keys")
        assert [tuple(row) for row in keys] == [(1, f"user:{USER}", "retry-1")]
    # Rebuilding a table on SQLite loses none of its constraints; 0009 only adds its own.
    for table in REBUILT_TABLES:
        assert constraint_names(engine, table) >= constraints_before[table] - {
            "uq_idempotency_keys_user_key"
        }
    foreign_keys = sa.inspect(engine).get_foreign_keys("accounts")
    options = {key["name"]: key["options"] for key in foreign_keys}
    balance_key = options[
        "fk_accounts_balance_is_last_entry"
    ]  # a balance is written before its entry
    assert (balance_key.get("deferrable"), balance_key.get("initially")) == (True, "DEFERRED")
    with pytest.raises(IntegrityError, match="one_owner"), engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO accounts (balance, reserved, created_at)"
            " VALUES (0, 0, '2026-12-01 00:00:00')"
        )
    # The new release reads the migrated rows as its own: no drift, the same accounts.
    with filled_0008.app_context():
        assert ledger.reconcile(db.session) == []
        assert accounts.of_user(db.session, USER) == ACCOUNT
        assert accounts.of_user(db.session, OTHER_USER) == OTHER_ACCOUNT
        db.session.remove()

    downgrade(filled_0008, BEFORE_DOORS)

    assert current_revision(filled_0008) == BEFORE_DOORS
    assert snapshot(engine, kept) == before
    assert_chains_whole(engine)
    assert_keys_hold(engine)
    with engine.connect() as connection:
        keys = connection.exec_driver_sql("SELECT id, user_id, key FROM idempotency_keys")
        assert [tuple(row) for row in keys] == [(1, USER, "retry-1")]
    assert "scope" not in columns(engine, "idempotency_keys")


def test_downgrade_is_refused_while_rows_exist_that_0008_cannot_hold(filled_0008: Flask) -> None:
    upgrade(filled_0008, MANY_DOORS)
    engine = engine_of(filled_0008)
    with engine.begin() as connection:
        insert(
            connection,
            {
                "teams": [{"id": 1, "name": "Acme", "created_at": at(10)}],
                "accounts": [
                    {
                        "id": 9,
                        "user_id": None,
                        "team_id": 1,
                        "balance": 0,
                        "reserved": 0,
                        "last_seq": None,
                        "last_entry_at": None,
                        "created_at": at(10),
                    }
                ],
                # A call through the gateway: no conversation, nothing charged.
                "holds": [
                    {
                        "id": 4,
                        "account_id": ACCOUNT,
                        "amount": 100_000,
                        "status": "settled",
                        "captured": 0,
                        "uncollected": 0,
                        "reference": "gateway call",
                        "expires_at": at(20),
                        "created_at": at(10),
                        "resolved_at": at(11),
                    }
                ],
                "usage_records": [
                    {
                        **usage(hold_id=4),
                        "id": 2,
                        "conversation_id": None,
                        "cost": 0,
                        "credits_charged": 0,
                    }
                ],
                "idempotency_keys": [
                    {
                        **rows_0008()["idempotency_keys"][0],
                        "id": 2,
                        "user_id": None,
                        "scope": "api_key:1",
                    }
                ],
            },
        )
    tables = {table: columns(engine, table) for table in (*KEPT_TABLES, "idempotency_keys")}
    before = snapshot(engine, tables)

    with pytest.raises(RuntimeError) as refused:
        downgrade(filled_0008, BEFORE_DOORS)

    message = str(refused.value)
    assert "Downgrade below 0009 refused, nothing was changed" in message
    assert "accounts owned by a team (no user_id): 1 (accounts.id 9)" in message
    assert "usage records without a conversation: 1 (usage_records.id 2)" in message
    assert "unbilled" not in message  # none of those
    assert current_revision(filled_0008) == MANY_DOORS
    assert snapshot(engine, tables) == before  # the other scope's key too
    assert {"teams", "team_members"} <= set(sa.inspect(engine).get_table_names())
    assert "team_id" in columns(engine, "accounts")
    assert_keys_hold(engine)


@pytest.mark.skipif(BACKEND != "sqlite", reason="a check of SQLite's own foreign keys")
def test_a_migration_that_breaks_a_foreign_key_is_rolled_back(filled_0008: Flask) -> None:
    """With foreign keys off during migrations, `PRAGMA foreign_key_check` before each commit
    is what stops a migration that leaves a row pointing at nothing."""
    engine = engine_of(filled_0008)
    # A row pointing at nothing, as a faulty migration step would leave it: written with the
    # foreign keys off (outside a transaction, through the driver, as the pragma requires).
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys=OFF")
        driver.execute("UPDATE holds SET account_id = 999 WHERE id = 3")
        driver.execute("PRAGMA foreign_keys=ON")

    with pytest.raises(RuntimeError, match="0008 -> 0009 leaves 1 row"):
        upgrade(filled_0008, HEAD)

    assert current_revision(filled_0008) == BEFORE_DOORS
    assert "teams" not in sa.inspect(engine).get_table_names()
