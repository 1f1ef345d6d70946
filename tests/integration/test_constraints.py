"""The database refuses broken money states even from code that bypasses the ledger module.

These tests really commit: a deferred constraint only speaks at COMMIT.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import TEST_CONTEXT, utcnow

CR = 1_000_000


@pytest.fixture
def funded(ctx, person_factory) -> int:  # type: ignore[no-untyped-def]
    account = person_factory(credits=10 * CR).account_id
    db.session.remove()
    return account


def commit_sql(sql: str, **params: object) -> None:
    with write_transaction(db.session):
        db.session.execute(text(sql), params)


def assert_refused(sql: str, **params: object) -> None:
    with pytest.raises(IntegrityError):
        commit_sql(sql, **params)
    assert ledger.reconcile(db.session) == []


def test_a_balance_change_without_its_ledger_entry_cannot_commit(funded: int) -> None:
    assert_refused("UPDATE accounts SET balance = balance + 5 WHERE id = :a", a=funded)


def test_a_balance_change_with_an_entry_that_does_not_chain_cannot_commit(funded: int) -> None:
    audit_id = _audit(funded)
    grant_id = db.session.execute(text("SELECT id FROM grants")).scalar_one()
    # The entry claims a balance_before that is not the previous entry's balance_after.
    assert_refused(
        "INSERT INTO ledger_entries (account_id, seq, prev_seq, type, amount, balance_before,"
        " balance_after, grant_id, audit_id, created_at)"
        " VALUES (:a, 2, 1, 'adjust', 5, 999, 1004, :g, :audit, :now)",
        a=funded,
        g=grant_id,
        audit=audit_id,
        now=_now_param(),
    )


def test_a_ledger_entry_without_an_audit_record_cannot_commit(funded: int) -> None:
    grant_id = db.session.execute(text("SELECT id FROM grants")).scalar_one()
    assert_refused(
        "INSERT INTO ledger_entries (account_id, seq, prev_seq, type, amount, balance_before,"
        " balance_after, grant_id, audit_id, created_at)"
        " VALUES (:a, 2, 1, 'adjust', 5, :b, :b + 5, :g, NULL, :now)",
        a=funded,
        b=10 * CR,
        g=grant_id,
        now=_now_param(),
    )


def test_an_account_pointing_at_an_older_entry_cannot_commit(funded: int) -> None:
    assert_refused("UPDATE accounts SET last_seq = NULL WHERE id = :a", a=funded)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE accounts SET reserved = balance + 1 WHERE id = :a",
        "UPDATE accounts SET reserved = -1 WHERE id = :a",
        "UPDATE grants SET remaining = amount + 1 WHERE account_id = :a",
        "UPDATE grants SET remaining = -1 WHERE account_id = :a",
        "UPDATE grants SET source = 'subscription' WHERE account_id = :a",
        "DELETE FROM ledger_entries WHERE account_id = :a",
    ],
)
def test_impossible_states_cannot_commit(funded: int, sql: str) -> None:
    assert_refused(sql, a=funded)


def test_a_balance_cannot_go_below_zero_even_with_a_valid_chain(funded: int) -> None:
    with pytest.raises(IntegrityError), write_transaction(db.session):
        audit_id = _audit(funded, commit=False)
        grant_id = db.session.execute(text("SELECT id FROM grants")).scalar_one()
        db.session.execute(
            text(
                "INSERT INTO ledger_entries (account_id, seq, prev_seq, type, amount,"
                " balance_before, balance_after, grant_id, audit_id, created_at)"
                " VALUES (:a, 2, 1, 'adjust', :amount, :b, :after, :g, :audit, :now)"
            ),
            {
                "a": funded,
                "amount": -11 * CR,
                "b": 10 * CR,
                "after": -CR,
                "g": grant_id,
                "audit": audit_id,
                "now": _now_param(),
            },
        )
        db.session.execute(
            text("UPDATE accounts SET balance = :after, last_seq = 2 WHERE id = :a"),
            {"after": -CR, "a": funded},
        )
    assert ledger.reconcile(db.session) == []


def test_two_subscription_grants_for_one_period_cannot_commit(funded: int) -> None:
    now = utcnow()
    with write_transaction(db.session):
        ledger.refresh(
            db.session,
            account_id=funded,
            period="2026-11",
            amount=CR,
            expires_at=now + timedelta(days=365),
            context=TEST_CONTEXT,
            now=now,
        )
    assert_refused(
        "INSERT INTO grants (account_id, source, amount, remaining, period, created_at)"
        " VALUES (:a, 'subscription', 1, 0, '2026-11', :now)",
        a=funded,
        now=_now_param(),
    )


def _now_param() -> object:
    # Raw SQL binds bypass the UTCDateTime type: give each database what it stores.
    now = utcnow()
    return now.replace(tzinfo=None) if db.engine.dialect.name == "sqlite" else now


def _audit(account_id: int, *, commit: bool = True) -> int:
    sql = text(
        "INSERT INTO audit_records (actor_type, action, account_id, details, created_at)"
        " VALUES ('system', 'test', :a, '{}', :now) RETURNING id"
    )
    if not commit:
        return db.session.execute(sql, {"a": account_id, "now": _now_param()}).scalar_one()
    with write_transaction(db.session):
        return db.session.execute(sql, {"a": account_id, "now": _now_param()}).scalar_one()
