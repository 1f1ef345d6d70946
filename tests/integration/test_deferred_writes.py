"""Writes the ledger defers on PostgreSQL (`LedgerSql.run`): sent with whatever runs next on the
connection, or with the COMMIT, never lost, never reordered, never outliving a rollback."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from creditapp import ledger
from creditapp.database import DeferredWriteFailed, write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from creditapp.ledger.sql import LedgerSql, Statement
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


def test_a_deferred_write_that_fails_is_not_taken_for_the_failure_of_what_sent_it(
    ctx: Flask, person_factory: Any
) -> None:
    """A deferred write refused by a constraint fails the transaction as itself, not as an
    IntegrityError of the ORM statement it went before (which a caller could read as "a
    concurrent twin was first")."""
    account = person_factory().account_id
    refused = Statement("UPDATE accounts SET reserved = -1 WHERE id = :account")
    with pytest.raises(DeferredWriteFailed) as failed, write_transaction(db.session):
        LedgerSql(db.session).run(refused, account=account)
        db.session.scalar(select(func.count()).select_from(AuditRecord))
    assert "reserved_within_balance" in str(failed.value)


def test_resolving_a_hold_resolved_before_leaves_its_account_unlocked(
    ctx: Flask, person_factory: Any
) -> None:
    """The account is locked with the hold's resolution only when this transaction resolved
    it: a void that finds the hold settled already locks nothing while its transaction goes
    on."""
    account = person_factory(credits=10**7).account_id
    with write_transaction(db.session):
        held = ledger.hold(
            db.session,
            account_id=account,
            amount=1000,
            ttl=timedelta(minutes=5),
            context=TEST_CONTEXT,
            now=utcnow(),
        )
    with write_transaction(db.session):
        ledger.settle(
            db.session, hold_id=held.hold_id, actual=10, context=TEST_CONTEXT, now=utcnow()
        )
    with write_transaction(db.session):
        voided = ledger.void(db.session, hold_id=held.hold_id, context=TEST_CONTEXT, now=utcnow())
        assert not voided.applied
        with db.engine.connect() as other:
            locked = other.execute(
                text("SELECT id FROM accounts WHERE id = :id FOR NO KEY UPDATE NOWAIT"),
                {"id": account},
            ).scalar_one()
            other.rollback()
        assert locked == account


def _lose_the_connection() -> None:
    """The server ends the session's connection, as a restart or a cut network would."""
    pid = db.session.connection().connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    with db.engine.connect() as other:
        # Waits (up to 5 s) for the backend to be gone, so that the next statement finds it so.
        ended = other.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        assert ended.scalar()


def _later_read() -> None:
    LedgerSql(db.session).later(Statement("SELECT 1")).rows()


def _plain_read() -> None:
    LedgerSql(db.session).one(Statement("SELECT 1"))


def _orm_read() -> None:
    db.session.scalar(select(func.count()).select_from(AuditRecord))


def _written_and_committed() -> None:
    with write_transaction(db.session):
        _record("lost")


def _committed_by_the_session() -> None:
    _record("lost")
    db.session.commit()


@pytest.mark.parametrize(
    "lost_under",
    [_plain_read, _later_read, _orm_read, _written_and_committed, _committed_by_the_session],
)
def test_a_connection_lost_under_a_statement_is_replaced(ctx: Flask, lost_under: Any) -> None:
    """The statement fails as the database's loss (a 503 to a request), the session's rollback
    sends nothing on the lost connection (it would fail too), and the next statement runs on
    a new one: whatever was deferred on the lost one is gone with its transaction."""
    with write_transaction(db.session):
        _record("before")
    _record("deferred")  # a write of the transaction the loss ends
    _lose_the_connection()
    with pytest.raises((psycopg.OperationalError, OperationalError)) as lost:
        lost_under()
    # The loss itself, not a rollback's failure on the lost connection ("the connection is lost").
    assert "server closed the connection unexpectedly" in str(lost.value)
    db.session.rollback()
    assert _actions() == ["before"]
