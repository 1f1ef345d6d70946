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
from creditapp.accounts.models import TeamMember
from creditapp.auth.models import ApiKey
from creditapp.billing.models import ROLLUP_SUMS, UsageRollup
from creditapp.config import sqlalchemy_url
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger import caps
from creditapp.ledger.models import SpendCap
from tests.conftest import BACKEND, PG_ADMIN_URL, TEST_CONTEXT, utcnow
from tests.helpers import assert_consistent, run_job_at


def test_models_and_migrations_agree(app: Flask) -> None:
    with app.app_context():
        check(directory=str(MIGRATIONS_DIR))  # raises if autogenerate would add anything


# A database of the release before 0009 (many doors), as its code left it.

BEFORE_DOORS = "0008"
# The newest revision: the upgrades below go all the way, as a release's would.
HEAD = str(ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head())
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
    audit: dict[str, Any] = {"actor_id": None, "request_id": None, "client_ip": None, "details": {}}
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


# A database of the release before 0012 (team wallets), as its code left it.

BEFORE_TEAM_WALLETS = "0011"
TEAM, OTHER_TEAM = 1, 2
TEAM_ACCOUNT, OTHER_TEAM_ACCOUNT = 9, 10  # not the teams' ids: each cap must name its account
# The caps of the first user's personal key and team key, and of the other user's team key.
PERSONAL_KEY_CAP, TEAM_KEY_CAP, OTHER_TEAM_KEY_CAP = 1, 2, 3
TEAM_GRANTED, KEY_CHARGED, OTHER_KEY_CHARGED, KEY_PENDING = 20_000_000, 700_000, 300_000, 400_000
TEAM_BALANCE = TEAM_GRANTED - KEY_CHARGED - OTHER_KEY_CHARGED
NEXT_DAY = 13 * 60  # 01:00 the day after T0
# The team account's chain (seq, type, amount, balance after, hold, minutes after T0): an
# admin's grant, then the calls of two keys, settled.
TEAM_ENTRIES = (
    (1, "grant", TEAM_GRANTED, TEAM_GRANTED, None, 6),
    (2, "charge", -KEY_CHARGED, TEAM_GRANTED - KEY_CHARGED, 4, 20),
    (3, "charge", -OTHER_KEY_CHARGED, TEAM_BALANCE, 6, NEXT_DAY),
)
# The rows of the ledger 0012 adds a column to (and rebuilds on SQLite) and those it reads:
# compared on the columns of 0011.
LEDGER_TABLES = ("accounts", "audit_records", "grants", "holds", "ledger_entries", "usage_records")


def rows_0011() -> list[dict[str, list[dict[str, Any]]]]:
    """`rows_0008` (its chat call rolled up), and since then: a team the first user owns and
    the other joined, whose account an admin funded, each with a key on it (the first user's
    made a call, settled, and has one in flight; the other's made one the next day, not rolled
    up yet); a team of the other user's alone; and an unused personal key of the first user.
    Inserted in this order, one table after another."""
    before_doors = rows_0008()
    del before_doors["idempotency_keys"]  # scoped since 0009, and 0012 leaves them alone
    before_doors["usage_records"] = [
        {**record, "rolled_up": True} for record in before_doors["usage_records"]
    ]
    audit: dict[str, Any] = {"actor_id": None, "request_id": None, "client_ip": None, "details": {}}
    return [
        before_doors,
        {
            "teams": [
                {"id": TEAM, "name": "Acme", "created_at": at(5)},
                {"id": OTHER_TEAM, "name": "Beta", "created_at": at(5)},
            ],
            "accounts": [
                {
                    "id": TEAM_ACCOUNT,
                    "user_id": None,
                    "team_id": TEAM,
                    "balance": TEAM_BALANCE,
                    "reserved": KEY_PENDING,
                    "last_seq": 3,
                    "last_entry_at": at(NEXT_DAY),
                    "created_at": at(5),
                },
                {
                    "id": OTHER_TEAM_ACCOUNT,
                    "user_id": None,
                    "team_id": OTHER_TEAM,
                    "balance": 0,
                    "reserved": 0,
                    "last_seq": None,
                    "last_entry_at": None,
                    "created_at": at(5),
                },
            ],
            "team_members": [
                {"team_id": team_id, "user_id": user_id, "role": role, "created_at": at(5)}
                for team_id, user_id, role in (
                    (TEAM, USER, "owner"),
                    (TEAM, OTHER_USER, "member"),
                    (OTHER_TEAM, OTHER_USER, "owner"),
                )
            ],
            "audit_records": [
                {
                    **audit,
                    "id": seq + 2,  # after rows_0008's, as are the entries'
                    "actor_type": "admin" if hold_id is None else "user",
                    "action": "grant" if hold_id is None else "settle",
                    "account_id": TEAM_ACCOUNT,
                    "balance_before": balance_after - amount,
                    "balance_after": balance_after,
                    "reserved_before": 0 if hold_id is None else KEY_PENDING + 1_000_000,
                    "reserved_after": 0 if hold_id is None else KEY_PENDING,
                    "created_at": at(minutes),
                }
                for seq, _type, amount, balance_after, hold_id, minutes in TEAM_ENTRIES
            ],
            "grants": [
                {
                    "id": 2,
                    "account_id": TEAM_ACCOUNT,
                    "source": "admin",
                    "amount": TEAM_GRANTED,
                    "remaining": TEAM_BALANCE,
                    "expires_at": None,
                    "period": None,
                    "reason": "team credits",
                    "created_at": at(6),
                }
            ],
            # Each key's cap, counting its holds settled this period and reserving those open.
            "spend_caps": [
                {
                    "id": cap_id,
                    "kind": "key",
                    "ceiling": ceiling,
                    "period": period,
                    "period_start": period_start,
                    "spent": spent,
                    "reserved": reserved,
                    "created_at": at(7),
                }
                for cap_id, ceiling, period, period_start, spent, reserved in (
                    (PERSONAL_KEY_CAP, 5_000_000, "day", T0.replace(hour=0), 0, 0),
                    (
                        TEAM_KEY_CAP,
                        None,
                        "month",
                        T0.replace(day=1, hour=0),
                        KEY_CHARGED,
                        KEY_PENDING,
                    ),
                    (
                        OTHER_TEAM_KEY_CAP,
                        2_000_000,
                        "day",
                        at(NEXT_DAY).replace(hour=0),
                        OTHER_KEY_CHARGED,
                        0,
                    ),
                )
            ],
            "api_keys": [
                {
                    "id": cap_id,
                    "user_id": user_id,
                    "account_id": account_id,
                    "team_id": team_id,
                    "cap_id": cap_id,
                    "name": f"key {cap_id}",
                    "digest": f"{cap_id}" * 64,
                    "prefix": f"sk-{cap_id}",
                    "allowed_models": None,
                    "expires_at": None,
                    "created_at": at(7),
                    "revoked_at": None,
                    "last_used_at": None,
                }
                for cap_id, user_id, account_id, team_id in (
                    (PERSONAL_KEY_CAP, USER, ACCOUNT, None),
                    (TEAM_KEY_CAP, USER, TEAM_ACCOUNT, TEAM),
                    (OTHER_TEAM_KEY_CAP, OTHER_USER, TEAM_ACCOUNT, TEAM),
                )
            ],
            "holds": [
                {
                    "id": hold_id,
                    "account_id": TEAM_ACCOUNT,
                    "amount": amount,
                    "status": status,
                    "captured": captured,
                    "uncollected": 0,
                    "reference": f"gateway call {hold_id}",
                    "expires_at": at(minutes + 10),
                    "created_at": at(minutes - 1),
                    "resolved_at": None if status == "pending" else at(minutes),
                    "capped": True,
                }
                for hold_id, amount, status, captured, minutes in (
                    (4, 1_000_000, "settled", KEY_CHARGED, 20),
                    (5, KEY_PENDING, "pending", None, 21),
                    (6, 1_000_000, "settled", OTHER_KEY_CHARGED, NEXT_DAY),
                )
            ],
            "hold_caps": [
                {"hold_id": 4, "cap_id": TEAM_KEY_CAP},
                {"hold_id": 5, "cap_id": TEAM_KEY_CAP},
                {"hold_id": 6, "cap_id": OTHER_TEAM_KEY_CAP},
            ],
            "ledger_entries": [
                {
                    "id": seq + 2,
                    "account_id": TEAM_ACCOUNT,
                    "seq": seq,
                    "prev_seq": seq - 1 if seq > 1 else None,
                    "type": entry_type,
                    "amount": amount,
                    "balance_before": balance_after - amount,
                    "balance_after": balance_after,
                    "grant_id": 2,
                    "hold_id": hold_id,
                    "audit_id": seq + 2,
                    "reference": None if hold_id is None else f"gateway call {hold_id}",
                    "request_id": None,
                    "created_at": at(minutes),
                }
                for seq, entry_type, amount, balance_after, hold_id, minutes in TEAM_ENTRIES
            ],
            "usage_records": [
                {
                    **usage(hold_id=hold_id),
                    "id": record,
                    "user_id": user_id,
                    "account_id": TEAM_ACCOUNT,
                    "conversation_id": None,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "cost": charged,
                    "credits_charged": charged,
                    "created_at": at(minutes),
                    "rolled_up": rolled,
                }
                for record, user_id, hold_id, tokens_in, tokens_out, charged, minutes, rolled in (
                    (2, USER, 4, 300, 200, KEY_CHARGED, 20, True),
                    (3, OTHER_USER, 6, 120, 90, OTHER_KEY_CHARGED, NEXT_DAY, False),
                )
            ],
            # Keyed by user: the first user's chat call and team key call are one row.
            "usage_rollups": [
                {
                    "id": 1,
                    "user_id": USER,
                    "day": T0.date(),
                    "provider": "demo",
                    "model": "demo-1",
                    "requests": 2,
                    "input_tokens": 100 + 300,
                    "cached_tokens": 0,
                    "cache_write_tokens": 0,
                    "output_tokens": 50 + 200,
                    "reasoning_tokens": 0,
                    "credits": CHARGED + KEY_CHARGED,
                }
            ],
        },
    ]


# The sums of the records per user, paying account, day, provider and model (requests, input,
# cached, cache write, output and reasoning tokens, credits), as the roll-up job counts them.
ROLLUPS_BY_ACCOUNT = [
    (USER, ACCOUNT, T0.date(), "demo", "demo-1", 1, 100, 0, 0, 50, 0, CHARGED),
    (USER, TEAM_ACCOUNT, T0.date(), "demo", "demo-1", 1, 300, 0, 0, 200, 0, KEY_CHARGED),
    (
        OTHER_USER,
        TEAM_ACCOUNT,
        at(NEXT_DAY).date(),
        "demo",
        "demo-1",
        1,
        120,
        0,
        0,
        90,
        0,
        OTHER_KEY_CHARGED,
    ),
]
# Every member's cap on their team's account: (team, user, account).
MEMBER_CAPS = [
    (TEAM, USER, TEAM_ACCOUNT),
    (TEAM, OTHER_USER, TEAM_ACCOUNT),
    (OTHER_TEAM, OTHER_USER, OTHER_TEAM_ACCOUNT),
]


def ids_continue_after_rows(connection: Connection, tables: set[str]) -> None:
    """New rows get the next ids (rows were inserted with theirs: PostgreSQL's sequences did
    not move; SQLite takes the next rowid by itself)."""
    if BACKEND == "sqlite":
        return
    for table in sorted(tables):
        connection.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        )


@pytest.fixture
def filled_0011(own_database: Flask) -> Flask:
    """The database at 0011, with the previous release's rows."""
    upgrade(own_database, BEFORE_TEAM_WALLETS)
    with engine_of(own_database).begin() as connection:
        for rows in rows_0011():
            insert(connection, rows)
        ids_continue_after_rows(
            connection,
            {table for rows in rows_0011() for table, values in rows.items() if "id" in values[0]},
        )
    return own_database


def query(engine: Engine, statement: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(statement)]


# The tables 0012 changes.
TEAM_WALLET_TABLES = (
    "grants",
    "holds",
    "ledger_entries",
    "spend_caps",
    "team_members",
    "usage_records",
    "usage_rollups",
)


def schema(engine: Engine) -> dict[str, dict[str, Any]]:
    """What the database says of each table 0012 changes: its columns, indexes and constraints
    (a table rebuilt on SQLite must come back with all of them)."""
    inspector = sa.inspect(engine)
    return {
        table: {
            "columns": [
                (column["name"], str(column["type"]), column["nullable"])
                for column in inspector.get_columns(table)
            ],
            "indexes": sorted(
                (index["name"], tuple(index["column_names"]), bool(index["unique"]))
                for index in inspector.get_indexes(table)
            ),
            "constraints": sorted(constraint_names(engine, table)),
        }
        for table in TEAM_WALLET_TABLES
    }


def ledger_columns(engine: Engine) -> dict[str, list[str]]:
    """The columns of 0011 of `LEDGER_TABLES`, except whether a record is rolled up (0012 has
    them all rolled up again)."""
    kept = {table: columns(engine, table) for table in LEDGER_TABLES}
    kept["usage_records"].remove("rolled_up")
    return kept


def key_caps(engine: Engine) -> list[tuple[Any, ...]]:
    return query(
        engine, "SELECT id, kind, ceiling, period, spent, reserved FROM spend_caps ORDER BY id"
    )


def links(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the tables keyed by pairs, which 0012 leaves alone (team_members on the
    columns of 0011)."""
    return {
        "hold_caps": query(
            engine, "SELECT hold_id, cap_id FROM hold_caps ORDER BY hold_id, cap_id"
        ),
        "team_members": query(
            engine, "SELECT team_id, user_id, role FROM team_members ORDER BY team_id, user_id"
        ),
        "api_keys": query(
            engine, "SELECT id, user_id, account_id, team_id, cap_id FROM api_keys ORDER BY id"
        ),
    }


def usage_to_roll_up_again(engine: Engine) -> None:
    """Roll-ups emptied, every record to be rolled up again."""
    assert query(engine, "SELECT COUNT(*) FROM usage_rollups") == [(0,)]
    rolled_up = query(engine, "SELECT id, rolled_up FROM usage_records ORDER BY id")
    assert [(record_id, bool(flag)) for record_id, flag in rolled_up] == [
        (1, False),
        (2, False),
        (3, False),
    ]


def assert_team_wallets_read_the_migrated_rows(app: Flask, migrated_between: set[datetime]) -> None:
    """At head: each key's cap names its key's account; every member has an uncapped cap on
    their team's account, counted from the month of the migration and nothing spent; the
    roll-up job recounts the records per paying account; and reconciliation finds no drift."""
    engine = engine_of(app)
    assert query(
        engine, "SELECT id, account_id FROM spend_caps WHERE kind = 'key' ORDER BY id"
    ) == [
        (PERSONAL_KEY_CAP, ACCOUNT),
        (TEAM_KEY_CAP, TEAM_ACCOUNT),
        (OTHER_TEAM_KEY_CAP, TEAM_ACCOUNT),
    ]
    with app.app_context():
        member_caps = db.session.execute(
            sa.select(TeamMember.team_id, TeamMember.user_id, SpendCap)
            .join(SpendCap, SpendCap.id == TeamMember.cap_id)
            .order_by(TeamMember.team_id, TeamMember.user_id)
        ).all()
        assert [
            (team_id, user_id, cap.account_id, cap.kind, cap.ceiling, cap.period)
            for team_id, user_id, cap in member_caps
        ] == [(*member, "member", None, "month") for member in MEMBER_CAPS]
        assert {cap.period_start for _team, _user, cap in member_caps} <= {
            caps.period_starts(moment)["month"] for moment in migrated_between
        }
        assert {(cap.spent, cap.reserved) for _team, _user, cap in member_caps} == {(0, 0)}
        # No cap of a member's but the one their membership names.
        assert db.session.scalar(
            sa.select(sa.func.count()).where(SpendCap.kind == "member")
        ) == len(MEMBER_CAPS)
        db.session.remove()
    usage_to_roll_up_again(engine)

    assert run_job_at(app, "rollup", utcnow()) == {"rolled_up": 3}

    with app.app_context():
        rollups = db.session.execute(
            sa.select(
                UsageRollup.user_id,
                UsageRollup.account_id,
                UsageRollup.day,
                UsageRollup.provider,
                UsageRollup.model,
                *(getattr(UsageRollup, name) for name in ROLLUP_SUMS),
            ).order_by(UsageRollup.user_id, UsageRollup.account_id, UsageRollup.day)
        ).all()
        db.session.remove()
    assert [tuple(row) for row in rollups] == ROLLUPS_BY_ACCOUNT
    assert_consistent(app)


def test_upgrade_to_team_wallets_gives_every_member_a_cap_and_recounts_rollups(
    filled_0011: Flask,
) -> None:
    engine = engine_of(filled_0011)
    kept = ledger_columns(engine)
    ledger_before = snapshot(engine, kept)
    caps_before = key_caps(engine)
    links_before = links(engine)
    schema_before = schema(engine)
    assert_keys_hold(engine)
    migration_started = utcnow()

    upgrade(filled_0011, HEAD)

    assert current_revision(filled_0011) == HEAD
    assert snapshot(engine, kept) == ledger_before
    assert key_caps(engine)[:3] == caps_before
    assert links(engine) == links_before
    # Who spent is not known for what was spent before: NULL, never guessed.
    assert query(engine, "SELECT DISTINCT user_id FROM ledger_entries") == [(None,)]
    assert query(engine, "SELECT DISTINCT user_id FROM holds") == [(None,)]
    assert_keys_hold(engine)
    assert_team_wallets_read_the_migrated_rows(filled_0011, {migration_started, utcnow()})

    downgrade(filled_0011, BEFORE_TEAM_WALLETS)

    assert current_revision(filled_0011) == BEFORE_TEAM_WALLETS
    assert schema(engine) == schema_before
    assert snapshot(engine, kept) == ledger_before
    assert key_caps(engine) == caps_before  # the members' caps are gone
    assert links(engine) == links_before
    usage_to_roll_up_again(engine)
    assert_keys_hold(engine)

    migration_started = utcnow()
    upgrade(filled_0011, HEAD)

    assert_team_wallets_read_the_migrated_rows(filled_0011, {migration_started, utcnow()})
    assert_keys_hold(engine)
    with filled_0011.app_context():
        check(directory=str(MIGRATIONS_DIR))  # the schema the models describe, once again


def test_downgrade_from_team_wallets_drops_member_caps_in_use(filled_0011: Flask) -> None:
    """A team key's calls count in its member's cap at head; going back to 0011 drops the
    members' caps and their holds' links to them, and keeps the holds and the keys' caps."""
    engine = engine_of(filled_0011)
    kept = ledger_columns(engine)
    upgrade(filled_0011, HEAD)
    now = utcnow()
    with filled_0011.app_context():
        key = db.session.get(ApiKey, OTHER_TEAM_KEY_CAP)  # each key has its cap's id
        assert key is not None
        with write_transaction(db.session):
            payer = accounts.key_payer(db.session, key)
            settled, pending = (
                ledger.hold(
                    db.session,
                    account_id=payer.account_id,
                    amount=amount,
                    ttl=timedelta(minutes=5),
                    context=TEST_CONTEXT,
                    now=now,
                    caps=payer.caps,
                    spender=OTHER_USER,
                ).hold_id
                for amount in (500_000, 200_000)
            )
            ledger.settle(
                db.session, hold_id=settled, actual=250_000, context=TEST_CONTEXT, now=now
            )
        member_cap = db.session.execute(
            sa.select(TeamMember.cap_id).where(
                TeamMember.team_id == TEAM, TeamMember.user_id == OTHER_USER
            )
        ).scalar_one()
        db.session.remove()
    assert payer == accounts.Payer(TEAM_ACCOUNT, (OTHER_TEAM_KEY_CAP, member_cap))
    assert query(engine, f"SELECT spent, reserved FROM spend_caps WHERE id = {member_cap}") == [
        (250_000, 200_000)
    ]
    assert_consistent(filled_0011)
    ledger_before = snapshot(engine, kept)
    caps_before = key_caps(engine)[:3]
    hold_caps_before = links(engine)["hold_caps"]

    downgrade(filled_0011, BEFORE_TEAM_WALLETS)

    assert current_revision(filled_0011) == BEFORE_TEAM_WALLETS
    assert snapshot(engine, kept) == ledger_before
    assert key_caps(engine) == caps_before
    assert caps_before[OTHER_TEAM_KEY_CAP - 1] == (
        OTHER_TEAM_KEY_CAP,
        "key",
        2_000_000,
        "day",
        250_000,
        200_000,
    )
    # The new holds' links to the key's cap stay, those to the member's cap are gone.
    assert hold_caps_before == [
        (4, TEAM_KEY_CAP),
        (5, TEAM_KEY_CAP),
        (6, OTHER_TEAM_KEY_CAP),
        (settled, OTHER_TEAM_KEY_CAP),
        (settled, member_cap),
        (pending, OTHER_TEAM_KEY_CAP),
        (pending, member_cap),
    ]
    assert links(engine)["hold_caps"] == [
        link for link in hold_caps_before if link[1] != member_cap
    ]
    assert_keys_hold(engine)

    upgrade(filled_0011, HEAD)

    # The member's cap starts again from nothing: no hold is counted in it.
    assert query(
        engine,
        "SELECT c.spent, c.reserved FROM spend_caps c JOIN team_members m ON m.cap_id = c.id"
        f" WHERE m.team_id = {TEAM} AND m.user_id = {OTHER_USER}",
    ) == [(0, 0)]
    assert_consistent(filled_0011)


def test_upgrade_to_keys_by_user_moves_an_api_keys_idempotency_keys_to_its_owner(
    filled_0011: Flask,
) -> None:
    """A `/v1` retry after the upgrade looks for its key in the owner's scope: the keys stored
    under an API key's own move there, but for one the owner already used (theirs stays)."""
    upgrade(filled_0011, "0019")

    def key(key_id: int, scope: str, name: str) -> dict[str, Any]:
        return {
            "id": key_id,
            "scope": scope,
            "key": name,
            "fingerprint": "f" * 64,
            "status": "completed",
            "claim_token": "c" * 32,
            "response_status": 200,
            "response_body": b"{}",
            "response_content_type": "application/json",
            "response_headers": None,
            "claimed_at": at(30),
            "expires_at": at(30) + timedelta(days=1),
        }

    with engine_of(filled_0011).begin() as connection:
        insert(
            connection,
            {
                "idempotency_keys": [
                    key(9, f"user:{USER}", "retry-1"),
                    key(10, f"key:{PERSONAL_KEY_CAP}", "gen-1"),
                    key(11, f"key:{TEAM_KEY_CAP}", "retry-1"),  # the owner's own "retry-1"
                    key(12, f"key:{OTHER_TEAM_KEY_CAP}", "gen-1"),
                    key(13, "webhook:stripe", "evt-1"),
                ]
            },
        )
    upgrade(filled_0011, HEAD)
    assert query(
        engine_of(filled_0011), "SELECT id, scope, key FROM idempotency_keys ORDER BY id"
    ) == [
        (9, f"user:{USER}", "retry-1"),
        (10, f"user:{USER}", "gen-1"),
        (11, f"key:{TEAM_KEY_CAP}", "retry-1"),
        (12, f"user:{OTHER_USER}", "gen-1"),
        (13, "webhook:stripe", "evt-1"),
    ]
