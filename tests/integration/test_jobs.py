"""The jobs on a real database: calendar refreshes, retries, roll-ups, expiry, reconciliation,
and each run twice (or three times) at once, which must equal one run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from creditapp import ledger
from creditapp.chat import compensations
from creditapp.chat.models import Compensation, UsageRecord, UsageRollup
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger.models import Grant, Hold, LedgerEntry
from tests.conftest import BACKEND, TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.integration.chat import add_price, send, start_conversation
from tests.integration.live_server import call, live_server
from tests.integration.test_http_conventions import assert_error

postgres_only = pytest.mark.postgres_only


def run(app: Flask, name: str, now: datetime) -> dict[str, Any]:
    with app.app_context():
        try:
            return run_job(name, db.session, now=now, actor="tests", settings=app.config)
        finally:
            db.session.remove()


def run_at_once(app: Flask, name: str, now: datetime, times: int) -> list[dict[str, Any]]:
    """The job `times` times in threads released together, each with its own connections."""
    barrier = threading.Barrier(times)

    def one(_index: int) -> dict[str, Any]:
        barrier.wait(timeout=30)
        return run(app, name, now)

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(one, range(times)))


def scalar(app: Flask, query: Any) -> Any:
    with app.app_context():
        value = db.session.scalar(query)
        db.session.remove()
    return value


def assert_consistent(app: Flask) -> None:
    with app.app_context():
        assert ledger.reconcile(db.session) == []
        db.session.remove()


def subscription_grants(app: Flask, person: Person) -> list[tuple[str, int, int]]:
    with app.app_context():
        rows = db.session.execute(
            select(Grant.period, Grant.amount, Grant.remaining)
            .where(Grant.account_id == person.account_id, Grant.source == "subscription")
            .order_by(Grant.id)
        ).all()
        db.session.remove()
    return [tuple(row) for row in rows]


CREDIT = 1_000_000


def test_refresh_renews_at_the_end_of_each_period_and_ends_the_old_grant(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(tier="free")  # 100 credits a month, granted at creation
    joined = utcnow()
    assert subscription_grants(app, person) == [(f"{joined:%Y-%m}", 100 * CREDIT, 100 * CREDIT)]

    assert run(app, "refresh", joined + timedelta(days=1))["granted"] == 0
    next_period = joined + timedelta(days=40)
    assert run(app, "refresh", next_period)["granted"] == 1
    grants = subscription_grants(app, person)
    assert [g[2] for g in grants] == [0, 100 * CREDIT]  # the old remainder expired
    # Several missed periods: one grant, for the period containing now.
    assert run(app, "refresh", joined + timedelta(days=200))["granted"] == 1
    assert len(subscription_grants(app, person)) == 3
    assert run(app, "refresh", joined + timedelta(days=200))["granted"] == 0
    assert_consistent(app)


def test_a_user_anchored_on_the_31st_renews_on_the_last_day_of_february(
    app: Flask, person_factory: Any
) -> None:
    # Every time is given: whatever today is, the user joined on 31 January 2027 at 09:00.
    person = person_factory(tier="free", joined_at=datetime(2027, 1, 31, 9, 0, tzinfo=UTC))
    assert run(app, "refresh", datetime(2027, 2, 28, 8, 59, tzinfo=UTC))["granted"] == 0
    assert run(app, "refresh", datetime(2027, 2, 28, 9, 0, tzinfo=UTC))["granted"] == 1
    assert run(app, "refresh", datetime(2027, 3, 30, 9, 0, tzinfo=UTC))["granted"] == 0
    assert run(app, "refresh", datetime(2027, 3, 31, 9, 0, tzinfo=UTC))["granted"] == 1
    assert subscription_grants(app, person) == [
        ("2027-01", 100 * CREDIT, 0),
        ("2027-02", 100 * CREDIT, 0),
        ("2027-03", 100 * CREDIT, 100 * CREDIT),
    ]


@postgres_only
def test_refresh_three_times_at_once_grants_once(app: Flask, person_factory: Any) -> None:
    people = [person_factory(tier="free") for _ in range(20)]
    later = utcnow() + timedelta(days=40)
    results = run_at_once(app, "refresh", later, 3)
    assert sum(result["granted"] for result in results) == 20
    for person in people:
        assert len(subscription_grants(app, person)) == 2
    assert_consistent(app)


def _open_holds(app: Flask, person: Person, count: int) -> None:
    with app.app_context():
        for _ in range(count):
            with write_transaction(db.session):
                ledger.hold(
                    db.session,
                    account_id=person.account_id,
                    amount=CREDIT,
                    ttl=timedelta(minutes=10),
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
        db.session.remove()


def test_expired_holds_are_voided_once(app: Flask, person_factory: Any) -> None:
    person = person_factory(credits=10 * CREDIT)
    _open_holds(app, person, 5)
    assert run(app, "expire-holds", utcnow())["expired"] == 0
    later = utcnow() + timedelta(minutes=11)
    results = (
        run_at_once(app, "expire-holds", later, 2)
        if BACKEND == "postgresql"
        else [run(app, "expire-holds", later), run(app, "expire-holds", later)]
    )
    assert sum(result["expired"] for result in results) == 5
    assert scalar(app, select(func.count()).select_from(Hold).where(Hold.status == "expired")) == 5
    with app.app_context():
        assert ledger.balance(db.session, account_id=person.account_id, now=later).reserved == 0
        db.session.remove()
    assert_consistent(app)


def _charged_messages(
    app: Flask, client: FlaskClient, person: Person, fake: FakeProviders, count: int
) -> list[str]:
    add_price(app, "openai", "gpt-jobs", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-jobs")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}  # 0.2 credits each
    fake.script("openai", *(Answer(usage=usage) for _ in range(count)))
    return [send(client, person, conversation).get_json()["reply"]["id"] for _ in range(count)]


def _owe(app: Flask, count: int) -> None:
    """A pending compensation for each of the first `count` usage records."""
    with app.app_context():
        with write_transaction(db.session):
            for usage in db.session.scalars(
                select(UsageRecord).order_by(UsageRecord.id).limit(count)
            ):
                compensations.record(
                    db.session, usage=usage, reason="test", requested_by="tests", now=utcnow()
                )
        db.session.remove()


def test_pending_compensations_are_paid_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    _charged_messages(app, client, person, fake_providers, 4)
    _owe(app, 4)
    now = utcnow()
    results = (
        run_at_once(app, "compensations", now, 2)
        if BACKEND == "postgresql"
        else [run(app, "compensations", now), run(app, "compensations", now)]
    )
    assert sum(result["paid"] for result in results) == 4
    assert run(app, "compensations", now + timedelta(hours=1))["paid"] == 0
    refunds = scalar(
        app, select(func.count()).select_from(LedgerEntry).where(LedgerEntry.type == "refund")
    )
    assert refunds == 4
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "10"
    assert_consistent(app)


@postgres_only
def test_a_failing_payment_backs_off_then_fails(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    admin: Person,
) -> None:
    person = person_factory(credits=10 * CREDIT)
    _charged_messages(app, client, person, fake_providers, 1)
    _owe(app, 1)
    # The database refuses the refund (a real failure inside the payment's transaction).
    with app.app_context(), write_transaction(db.session) as session:
        session.execute(
            text("""
            CREATE FUNCTION refuse_grant() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'refund refused for the test'; END $$;
            CREATE TRIGGER refuse_grant BEFORE INSERT ON grants FOR EACH ROW
            EXECUTE FUNCTION refuse_grant();""")
        )
    try:
        now = utcnow()
        moments = [now]
        for attempt in range(1, 6):
            result = run(app, "compensations", moments[-1])
            assert result["paid"] == 0
            with app.app_context():
                compensation = db.session.scalars(select(Compensation)).one()
                db.session.remove()
            assert compensation.attempts == attempt
            if attempt < 5:
                assert compensation.status == "pending"
                # 1, 2, 4, 8 minutes after each failure.
                assert compensation.next_attempt_at == moments[-1] + timedelta(
                    minutes=2 ** (attempt - 1)
                )
                assert (
                    run(app, "compensations", compensation.next_attempt_at - timedelta(seconds=1))[
                        "paid"
                    ]
                    == 0
                )
                moments.append(compensation.next_attempt_at)
        assert compensation.status == "failed"
        assert "refund refused" in (compensation.last_error or "")
    finally:
        with app.app_context(), write_transaction(db.session) as session:
            session.execute(
                text("DROP TRIGGER refuse_grant ON grants; DROP FUNCTION refuse_grant();")
            )
    listed = client.get("/api/admin/credit/compensations?status=failed", headers=admin.headers)
    assert [c["status"] for c in listed.get_json()["items"]] == ["failed"]
    assert listed.get_json()["items"][0]["user_id"] == str(person.id)
    assert_consistent(app)


def usage_answers(client: FlaskClient, person: Person) -> list[Any]:
    today = utcnow().date()

    def moment(delta: timedelta) -> str:
        return (utcnow() + delta).isoformat().replace("+00:00", "Z")

    queries = [
        f"from={today}&to={today}",
        f"from={today - timedelta(days=3)}&to={today}&group_by=model",
        f"from={today}&group_by=provider",
        f"from={moment(-timedelta(minutes=1))}&to={moment(timedelta(minutes=1))}",
    ]
    return [
        client.get(f"/api/credit/usage?{query}", headers=person.headers).get_json()["groups"]
        for query in queries
    ]


def test_usage_answers_are_the_same_before_and_after_roll_ups(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    _charged_messages(app, client, person, fake_providers, 6)
    before = usage_answers(client, person)
    assert before[0][0]["requests"] == 6

    assert run(app, "rollup", utcnow())["rolled_up"] == 6
    assert usage_answers(client, person) == before
    assert run(app, "rollup", utcnow())["rolled_up"] == 0
    assert usage_answers(client, person) == before
    # New records after a roll-up count once too.
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    conversation = start_conversation(client, person, "openai", "gpt-jobs")
    send(client, person, conversation)
    after = usage_answers(client, person)
    assert after[0][0]["requests"] == 7 and after[0][0]["credits"] == "1.4"
    with app.app_context():
        rollup = db.session.scalars(select(UsageRollup)).one()
        assert (rollup.requests, rollup.credits) == (6, 1_200_000)
        db.session.remove()


@postgres_only
def test_two_roll_ups_at_once_count_each_record_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    people = [person_factory(credits=10 * CREDIT) for _ in range(3)]
    for person in people:
        _charged_messages(app, client, person, fake_providers, 5)
    before = [usage_answers(client, person) for person in people]
    results = run_at_once(app, "rollup", utcnow(), 2)
    assert sum(result["rolled_up"] for result in results) == 15
    assert scalar(app, select(func.sum(UsageRollup.requests))) == 15
    assert [usage_answers(client, person) for person in people] == before


def test_reconciliation_reports_and_changes_nothing(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    assert_error(
        client.get("/api/admin/credit/reconciliation", headers=admin.headers), 404, "not_found"
    )
    person = person_factory(credits=5 * CREDIT)
    entries_before = scalar(app, select(func.count()).select_from(LedgerEntry))
    ran_at = utcnow()
    runs = (
        run_at_once(app, "reconcile", ran_at, 2)
        if BACKEND == "postgresql"
        else [run(app, "reconcile", ran_at)]
    )
    assert all(
        result == {"checked_accounts": 2, "drift": 0, "unbilled_calls": 0} for result in runs
    )
    report = client.get("/api/admin/credit/reconciliation", headers=admin.headers).get_json()
    assert report == {
        "ran_at": ran_at.isoformat().replace("+00:00", "Z"),
        "checked_accounts": 2,
        "drift": [],
        "unbilled_calls": 0,
        "unbilled_cost": "0",
    }
    assert scalar(app, select(func.count()).select_from(LedgerEntry)) == entries_before
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "5"


def test_process_compensations_answers_202_and_lists_by_status(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    admin: Person,
    fake_providers: FakeProviders,
) -> None:
    person = person_factory(credits=10 * CREDIT)
    _charged_messages(app, client, person, fake_providers, 2)
    _owe(app, 2)
    response = client.post("/api/admin/credit/process-compensations", headers=admin.headers)
    assert response.status_code == 202
    body = response.get_json()
    assert body["pending"] == 2 and len(body["task_id"]) == 36
    pending = client.get("/api/admin/credit/compensations?status=pending", headers=admin.headers)
    assert [c["amount"] for c in pending.get_json()["items"]] == ["0.2", "0.2"]
    assert_error(
        client.get("/api/admin/credit/compensations?status=lost", headers=admin.headers),
        400,
        "validation_error",
    )
    assert_error(
        client.post("/api/admin/credit/process-compensations", headers=person.headers),
        403,
        "forbidden",
    )


@pytest.mark.real_clock
def test_a_hold_left_by_a_killed_web_worker_is_expired(
    app: Flask, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    add_price(app, "openai", "gpt-jobs", input="1", output="2")
    conversation = start_conversation(app.test_client(), person, "openai", "gpt-jobs")
    fake_providers.delay = 30  # the provider is still answering when the worker dies
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "PROVIDER_TIMEOUT_SECONDS": "60"}
    pending = select(func.count()).select_from(Hold).where(Hold.status == "pending")
    with live_server(env) as base:
        dropped: list[BaseException] = []

        def send_and_lose_the_connection() -> None:
            try:
                call(
                    "POST",
                    f"{base}/api/conversations/{conversation}/messages",
                    person.token,
                    b'{"content": "Hello there"}',
                    headers={"Idempotency-Key": "doomed"},
                )
            except OSError as error:  # the worker died with the request
                dropped.append(error)

        sender = threading.Thread(target=send_and_lose_the_connection, daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while scalar(app, pending) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = subprocess.run(
            ["pgrep", "-P", str(base.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        sender.join(timeout=30)
    assert len(dropped) == 1
    fake_providers.delay = 0
    with app.app_context():
        assert ledger.balance(db.session, account_id=person.account_id, now=utcnow()).reserved > 0
        db.session.remove()

    ttl = timedelta(seconds=app.config["HOLD_TTL_SECONDS"])
    assert run(app, "expire-holds", utcnow() + ttl + timedelta(seconds=1)) == {"expired": 1}
    assert scalar(app, pending) == 0
    balance = app.test_client().get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("10", "0")
    assert_consistent(app)
