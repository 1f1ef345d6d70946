"""Writes the ledger defers on PostgreSQL (`LedgerSql.run`): sent with whatever runs next on the
connection, or with the COMMIT, never lost, never reordered, never outliving a rollback."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from tests.conftest import TEST_CONTEXT, utcnow

pytestmark = pytest.mark.postgres_only


def _record(action: str) -> None:
    """An audit record: a deferred write."""
    ledger.record_action(db.session, action=action, context=TEST_CONTEXT, now=utcnow(), details={})


def _actions() -> list[str]:
    return list(db.session.scalars(select(AuditRecord.action).order_by(AuditRecord.id)))


def _deferred() -> list[Any]:
    driver = db.session.connection().connection.driver_connection
    return driver.deferred  # type: ignore[no-any-return,union-attr]


def test_a_statement_that_follows_a_deferred_write_sees_it(ctx: Flask) -> None:
    with write_transaction(db.session):
        _record("first")
        assert len(_deferred()) == 1
        # An ORM read, in the same transaction: the write goes first.
        assert db.session.scalar(select(func.count()).select_from(AuditRecord)) == 1
        assert _deferred() == []
    assert _actions() == ["first"]


def test_a_commit_sends_what_is_deferred_with_it_whoever_commits(ctx: Flask) -> None:
    with write_transaction(db.session):
        _record("by write_transaction")
    _record("by the session")
    db.session.commit()  # not through write_transaction: the engine's commit event sends it
    db.session.rollback()
    assert _actions() == ["by write_transaction", "by the session"]


def test_a_rollback_drops_what_is_deferred(ctx: Flask) -> None:
    with pytest.raises(RuntimeError), write_transaction(db.session):
        _record("rolled back")
        raise RuntimeError("the transaction fails")
    with write_transaction(db.session):
        assert _deferred() == []
        _record("kept")
    assert _actions() == ["kept"]
