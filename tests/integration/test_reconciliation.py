"""Reconciliation reads one snapshot: writes running beside it never look like drift, and drift
that is really there is named, with its account and invariant."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from creditapp import ledger
from creditapp.accounts.models import TeamMember
from creditapp.database import write_transaction
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger.models import Grant
from tests.conftest import BACKEND, TEST_CONTEXT, Person, utcnow
from tests.helpers import new_team

CR = 1_000_000


def _in_transaction(app: Flask, operation: Any, **kwargs: Any) -> Any:
    with app.app_context():
        try:
            with write_transaction(db.session):
                return operation(db.session, context=TEST_CONTEXT, now=utcnow(), **kwargs)
        except (InsufficientCredits, BalanceWouldGoNegative):
            return None
        finally:
            db.session.remove()


def _busy_account(app: Flask, account_id: int, seed: int, stop: threading.Event) -> int:
    """Grant, hold, settle and adjust on one account until told to stop; returns how many."""
    chance = random.Random(seed)
    done = 0
    while not stop.is_set():
        step = chance.choice(["grant", "hold-settle", "adjust"])
        if step == "grant":
            _in_transaction(
                app,
                ledger.grant,
                account_id=account_id,
                amount=chance.randint(1, 5 * CR),
                source="promo",
                reason="busy",
            )
        elif step == "adjust":
            _in_transaction(
                app, ledger.adjust, account_id=account_id, amount=-chance.randint(1, CR), reason="x"
            )
        else:
            held = _in_transaction(
                app,
                ledger.hold,
                account_id=account_id,
                amount=chance.randint(1, 2 * CR),
                ttl=timedelta(minutes=10),
            )
            if held is not None:
                _in_transaction(
                    app, ledger.settle, hold_id=held.hold_id, actual=chance.randint(0, 3 * CR)
                )
        done += 1
    return done


@pytest.mark.postgres_only
def test_no_drift_is_reported_while_accounts_are_written(app: Flask, person_factory: Any) -> None:
    people = [person_factory(credits=20 * CR) for _ in range(4)]
    stop = threading.Event()
    reports: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        writers = [
            pool.submit(_busy_account, app, people[index % 4].account_id, index, stop)
            for index in range(8)
        ]
        started = time.monotonic()
        while len(reports) < 20 or time.monotonic() - started < 4:
            with app.app_context():
                reports.append(
                    run_job(
                        "reconcile", db.session, now=utcnow(), actor="tests", settings=app.config
                    )
                )
                db.session.remove()
        stop.set()
        operations = sum(writer.result(timeout=60) for writer in writers)
    assert operations > 100  # the writers really ran beside the checks
    assert [report["drift"] for report in reports] == [0] * len(reports)
    assert all(report["checked_accounts"] == 4 for report in reports)


def _report(client: FlaskClient, admin: Person, app: Flask) -> list[dict[str, str]]:
    with app.app_context():
        run_job("reconcile", db.session, now=utcnow(), actor="tests", settings=app.config)
        db.session.remove()
    response = client.get("/api/admin/credit/reconciliation", headers=admin.headers)
    assert response.status_code == 200
    drift: list[dict[str, str]] = response.get_json()["drift"]
    return drift


def _corrupt(app: Flask, statement: str, **params: Any) -> None:
    with app.app_context():
        with write_transaction(db.session):
            assert db.session.execute(text(statement), params).rowcount == 1  # type: ignore[attr-defined]
        db.session.remove()


def test_a_grant_corrupted_behind_the_ledgers_back_is_named(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    person_factory(credits=3 * CR)  # a bystander, reported clean
    victim = person_factory(credits=5 * CR)
    with app.app_context():
        grant_id = db.session.scalar(select(Grant.id).where(Grant.account_id == victim.account_id))
        db.session.remove()
    _corrupt(app, "UPDATE grants SET remaining = remaining - 1 WHERE id = :grant", grant=grant_id)
    drift = _report(client, admin, app)
    assert {item["user_id"] for item in drift} == {str(victim.id)}
    assert sorted((item["invariant"], item["expected"], item["actual"]) for item in drift) == [
        ("balance == sum(grants' remaining)", "4.999999", "5"),
        (f"grant {grant_id}: remaining == sum(its entries)", "5", "4.999999"),
    ]


def test_a_hold_amount_corrupted_behind_the_ledgers_back_is_named(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    victim = person_factory(credits=5 * CR)
    person_factory(credits=5 * CR)
    _in_transaction(
        app, ledger.hold, account_id=victim.account_id, amount=2 * CR, ttl=timedelta(minutes=10)
    )
    _corrupt(
        app,
        "UPDATE holds SET amount = amount + 7 WHERE account_id = :account",
        account=victim.account_id,
    )
    assert _report(client, admin, app) == [
        {
            "user_id": str(victim.id),
            "team_id": None,
            "invariant": "reserved == sum(pending holds)",
            "expected": "2.000007",
            "actual": "2",
        }
    ]


def _commit_bypassing_foreign_keys(app: Flask, statement: str, **params: Any) -> None:
    """Commit `statement` on a connection of its own with foreign keys not enforced: damage
    only a broken restore or a hand edit could do. CHECK constraints still hold."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if BACKEND == "postgresql":
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as raw:
            raw.execute("SET session_replication_role = replica")  # skips foreign key triggers
            assert raw.execute(statement, params).rowcount == 1
        return
    raw_sqlite = sqlite3.connect(url.removeprefix("sqlite:///"))  # foreign keys off by default
    with raw_sqlite:
        assert (
            raw_sqlite.execute(statement.replace("%(account)s", ":account"), params).rowcount == 1
        )
    raw_sqlite.close()


# Each invariant reconciliation checks, and a corruption of exactly it.
REFUSED_BY_A_CHECK = [
    ("balance >= 0", "UPDATE accounts SET balance = -1 WHERE id = :account"),
    ("reserved >= 0", "UPDATE accounts SET reserved = -1 WHERE id = :account"),
    ("reserved <= balance", "UPDATE accounts SET reserved = balance + 1 WHERE id = :account"),
]
REFUSED_BY_A_FOREIGN_KEY = [
    (
        "balance == sum(ledger entries)",
        "UPDATE accounts SET balance = balance + 1 WHERE id = %(account)s",
    ),
    (
        "balance == newest entry's balance_after",
        "UPDATE ledger_entries SET amount = amount + 1, balance_after = balance_after + 1"
        " WHERE account_id = %(account)s AND seq = 2",
    ),
    (
        "last_seq == number of entries",
        "UPDATE accounts SET last_seq = last_seq + 1 WHERE id = %(account)s",
    ),
]
UNGUARDED = [
    ("balance == sum(grants' remaining)", "UPDATE grants SET remaining = remaining - 1"),
    ("grant {grant}: remaining == sum(its entries)", "UPDATE grants SET remaining = remaining - 1"),
    ("reserved == sum(pending holds)", "UPDATE holds SET amount = amount + 1"),
]


@pytest.fixture
def victim(app: Flask, person_factory: Any) -> Person:
    """An account with two entries, a grant and an open hold, beside a clean bystander."""
    person_factory(credits=3 * CR)
    person: Person = person_factory(credits=5 * CR)
    _in_transaction(
        app, ledger.grant, account_id=person.account_id, amount=CR, source="promo", reason="2nd"
    )
    _in_transaction(
        app, ledger.hold, account_id=person.account_id, amount=2 * CR, ttl=timedelta(minutes=10)
    )
    return person


def _drift_of(app: Flask) -> dict[int, set[str]]:
    with app.app_context():
        found = ledger.reconcile(db.session)
        db.session.remove()
    named: dict[int, set[str]] = {}
    for item in found:
        named.setdefault(item.user_id, set()).add(item.invariant)
    return named


def test_spending_caps_are_reconciled_with_their_holds(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    """A key's cap: clean after holds settled, voided and pending; a counter corrupted behind
    the ledger's back is named with the account that spends through it."""
    victim = person_factory(credits=50 * CR)
    with app.app_context():
        with write_transaction(db.session):
            cap_id = ledger.caps.open_cap(
                db.session,
                account_id=victim.account_id,
                kind="key",
                ceiling=20 * CR,
                period="total",
                now=utcnow(),
            )
        db.session.remove()
    held = [
        _in_transaction(
            app,
            ledger.hold,
            account_id=victim.account_id,
            amount=3 * CR,
            ttl=timedelta(minutes=10),
            caps=(cap_id,),
        )
        for _ in range(3)
    ]
    _in_transaction(app, ledger.settle, hold_id=held[0].hold_id, actual=2 * CR)
    _in_transaction(app, ledger.void, hold_id=held[1].hold_id)
    assert _report(client, admin, app) == []
    _corrupt(
        app, "UPDATE spend_caps SET reserved = reserved + 1, spent = 0 WHERE id = :cap", cap=cap_id
    )
    assert sorted(
        (item["user_id"], item["invariant"], item["expected"], item["actual"])
        for item in _report(client, admin, app)
    ) == [
        (str(victim.id), f"cap {cap_id}: reserved == sum(its pending holds)", "3", "3.000001"),
        (str(victim.id), f"cap {cap_id}: spent == sum(captured this period)", "2", "0"),
    ]


def test_a_cap_with_no_holds_yet_is_reconciled_too(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    """A member's cap no call has touched: a counter corrupted there would refuse the member
    silently; it is named with the team's account."""
    owner, member = person_factory(), person_factory()
    with app.app_context():
        team_id, _account = new_team(owner.id, member.id, cap=10 * CR)
        cap_id = db.session.scalar(select(TeamMember.cap_id).where(TeamMember.user_id == member.id))
        db.session.remove()
    assert _report(client, admin, app) == []
    _corrupt(app, "UPDATE spend_caps SET reserved = 4 WHERE id = :cap", cap=cap_id)
    assert _report(client, admin, app) == [
        {
            "user_id": None,
            "team_id": str(team_id),
            "invariant": f"cap {cap_id}: reserved == sum(its pending holds)",
            "expected": "0",
            "actual": "0.000004",
        }
    ]


@pytest.mark.parametrize(("invariant", "corruption"), REFUSED_BY_A_CHECK)
def test_a_check_constraint_refuses_breaking(
    app: Flask, victim: Person, invariant: str, corruption: str
) -> None:
    with pytest.raises(IntegrityError), app.app_context():
        try:
            with write_transaction(db.session):
                db.session.execute(text(corruption), {"account": victim.account_id})
        finally:
            db.session.remove()
    assert _drift_of(app) == {}


@pytest.mark.parametrize(("invariant", "corruption"), REFUSED_BY_A_FOREIGN_KEY)
def test_a_foreign_key_refuses_breaking_and_reconciliation_names_it_when_bypassed(
    app: Flask, victim: Person, invariant: str, corruption: str
) -> None:
    with pytest.raises(IntegrityError), app.app_context():
        try:
            with write_transaction(db.session):
                db.session.execute(
                    text(corruption.replace("%(account)s", ":account")),
                    {"account": victim.account_id},
                )
        finally:
            db.session.remove()
    assert _drift_of(app) == {}
    _commit_bypassing_foreign_keys(app, corruption, account=victim.account_id)
    drift = _drift_of(app)
    assert set(drift) == {victim.id}
    assert invariant in drift[victim.id]


@pytest.mark.parametrize(("invariant", "corruption"), UNGUARDED)
def test_reconciliation_names_what_no_constraint_guards(
    app: Flask, victim: Person, invariant: str, corruption: str
) -> None:
    with app.app_context():
        grant_id = db.session.scalars(
            select(Grant.id).where(Grant.account_id == victim.account_id).order_by(Grant.id)
        ).first()
        db.session.remove()
    _corrupt(
        app,
        f"{corruption} WHERE id = (SELECT MIN(id) FROM {corruption.split()[1]}"
        " WHERE account_id = :account)",
        account=victim.account_id,
    )
    drift = _drift_of(app)
    assert set(drift) == {victim.id}
    assert invariant.format(grant=grant_id) in drift[victim.id]
