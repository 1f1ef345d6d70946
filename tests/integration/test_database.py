"""Transactions as the ledger needs them (creditapp.database)."""

from __future__ import annotations

import sqlite3

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from creditapp.config import load_config
from creditapp.database import write_transaction
from creditapp.extensions import db


def test_sqlite_write_transactions_take_the_write_lock_at_begin(ctx: Flask) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL locks rows, not the database")
    path = db.engine.url.database
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        # No statement has run yet, and still no other writer may begin.
        with write_transaction(db.session), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        # Plain reads begin a deferred transaction and leave writers alone.
        db.session.execute(text("SELECT 1"))
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        db.session.rollback()
        other.close()


def test_write_transaction_rolls_back_on_error(ctx: Flask) -> None:
    with pytest.raises(RuntimeError), write_transaction(db.session):
        db.session.execute(text("UPDATE tiers SET monthly_credits = 7 WHERE name = 'free'"))
        raise RuntimeError("boom")
    credits = db.session.execute(
        text("SELECT monthly_credits FROM tiers WHERE name = 'free'")
    ).scalar_one()
    assert credits == 100_000_000


@pytest.mark.postgres_only
@pytest.mark.parametrize(("setting", "threshold"), [("true", 5), ("false", None)])
def test_prepared_statements_can_be_switched_off_for_pgbouncer(
    app: Flask, monkeypatch: pytest.MonkeyPatch, setting: str, threshold: int | None
) -> None:
    monkeypatch.setenv("DATABASE_URL", app.config["SQLALCHEMY_DATABASE_URI"])
    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", setting)
    config = load_config("testing")
    engine = create_engine(config.SQLALCHEMY_DATABASE_URI, **config.SQLALCHEMY_ENGINE_OPTIONS)
    try:
        with engine.connect() as connection:
            assert connection.connection.driver_connection.prepare_threshold == threshold
    finally:
        engine.dispose()


def test_a_statements_error_names_its_sql_but_not_its_values(ctx: Flask) -> None:
    """Errors are logged whole (`database_unavailable`, `job_run`): a value in one, such as a
    webhook endpoint's secret on its insert, would be written to the logs."""
    with pytest.raises(DBAPIError) as failed:
        db.session.execute(text("SELECT :secret FROM no_such_table"), {"secret": "whsec_abc123"})
    db.session.rollback()
    assert "no_such_table" in str(failed.value)
    assert "whsec_abc123" not in str(failed.value)
