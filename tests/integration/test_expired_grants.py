"""Expired credits, as every client sees them: never spendable, shown with their status, and
written off by the `expire-grants` job even on an idle account (contract section 2)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger.models import AuditRecord, LedgerEntry
from tasks.jobs import beat_schedule
from tests.conftest import BACKEND, TEST_CONTEXT, Person, utcnow

CR = 1_000_000


def _at(app: Flask, moment: datetime, operation: Any, **kwargs: Any) -> Any:
    with app.app_context():
        with write_transaction(db.session):
            result = operation(db.session, context=TEST_CONTEXT, now=moment, **kwargs)
        db.session.remove()
    return result


def _held_past_expiry(app: Flask, person: Person) -> datetime:
    """Two hours ago: a grant used up, a grant expiring an hour later, a never-expiring grant,
    and a hold placed before the expiry that is still open now. Returns that moment."""
    past = utcnow() - timedelta(hours=2)
    account = person.account_id
    _at(app, past, ledger.grant, account_id=account, amount=CR, source="promo", reason="used")
    _at(app, past, ledger.adjust, account_id=account, amount=-CR, reason="spent it")
    _at(
        app,
        past,
        ledger.grant,
        account_id=account,
        amount=5 * CR,
        source="promo",
        reason="expires",
        expires_at=past + timedelta(hours=1),
    )
    _at(app, past, ledger.grant, account_id=account, amount=4 * CR, source="promo", reason="keeps")
    _at(
        app,
        past + timedelta(minutes=10),
        ledger.hold,
        account_id=account,
        amount=3 * CR,
        ttl=timedelta(hours=10),
    )
    return past


def test_grants_show_their_status_and_never_expired_credits_as_spendable(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    _held_past_expiry(app, person)
    items = client.get("/api/credit/grants", headers=person.headers).get_json()["items"]
    # The open hold, placed before the expiry, claims 3 of the expired grant (it would have
    # drawn them first): they stay until it resolves, never spendable by anything else.
    assert [(g["reason"], g["status"], g["amount"], g["remaining"]) for g in items] == [
        ("keeps", "active", "4", "4"),
        ("expires", "expired", "5", "3"),
        ("used", "used_up", "1", "0"),
    ]
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"], balance["available"]) == ("7", "3", "4")


def _expired_entries(app: Flask, account_id: int) -> list[int]:
    with app.app_context():
        amounts = db.session.scalars(
            select(LedgerEntry.amount)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.type == "expire")
            .order_by(LedgerEntry.seq)
        ).all()
        db.session.remove()
    return list(amounts)


def _run(app: Flask, now: datetime) -> dict[str, Any]:
    with app.app_context():
        try:
            return run_job("expire-grants", db.session, now=now, actor="tests", settings=app.config)
        finally:
            db.session.remove()


def test_the_job_writes_off_idle_accounts_keeping_what_open_holds_need(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    holding = person_factory()
    past = _held_past_expiry(app, holding)
    idle = person_factory()
    _at(
        app,
        past,
        ledger.grant,
        account_id=idle.account_id,
        amount=7 * CR,
        source="promo",
        reason="idle",
        expires_at=past + timedelta(minutes=30),
    )
    untouched = person_factory(credits=2 * CR)
    balances_before = [
        client.get("/api/credit/balance", headers=p.headers).get_json()
        for p in (holding, idle, untouched)
    ]

    now = utcnow()
    if BACKEND == "postgresql":
        barrier = threading.Barrier(2)

        def one(_index: int) -> dict[str, Any]:
            barrier.wait(timeout=30)
            return _run(app, now)

        with ThreadPoolExecutor(max_workers=2) as pool:
            summaries = list(pool.map(one, range(2)))
        assert sum(s["written_off"] for s in summaries) == 9 * CR
    else:
        assert _run(app, now) == {"accounts": 2, "written_off": 9 * CR, "expiring_announced": 0}
    assert _run(app, now) == {"accounts": 0, "written_off": 0, "expiring_announced": 0}

    assert _expired_entries(app, holding.account_id) == [-2 * CR]
    assert _expired_entries(app, idle.account_id) == [-7 * CR]
    assert _expired_entries(app, untouched.account_id) == []
    # What clients see did not change: expired credits were never shown as spendable.
    assert [
        client.get("/api/credit/balance", headers=p.headers).get_json()
        for p in (holding, idle, untouched)
    ] == balances_before
    with app.app_context():
        assert ledger.reconcile(db.session) == []
        write_offs = db.session.scalar(
            select(func.count()).where(AuditRecord.action == "expire_grants")
        )
        db.session.remove()
    assert write_offs == 2  # one audited write-off per account, however many runs


def test_the_job_runs_from_the_cli_and_on_beats_schedule(app: Flask, person_factory: Any) -> None:
    person = person_factory()
    past = utcnow() - timedelta(days=1)
    _at(
        app,
        past,
        ledger.grant,
        account_id=person.account_id,
        amount=CR,
        source="promo",
        reason="soon gone",
        expires_at=past + timedelta(hours=1),
    )
    result = app.test_cli_runner().invoke(
        args=["jobs", "run", "expire-grants", "--now", utcnow().isoformat()]
    )
    assert result.exit_code == 0, result.output
    assert '"accounts": 1' in result.output and '"written_off": 1000000' in result.output
    assert _expired_entries(app, person.account_id) == [-CR]
    schedule = beat_schedule(app.config["JOB_PERIODS"])
    assert schedule["job:expire-grants"]["args"] == ("expire-grants",)
    assert schedule["job:purge-idempotency"]["args"] == ("purge-idempotency",)
