"""Compensations: refunds owed are paid exactly once, with backoff; admins start and list
them."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.billing.models import Compensation
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, LedgerEntry
from tests.conftest import BACKEND, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    add_price,
    assert_consistent,
    assert_error,
    charged_messages,
    database_refuses,
    new_team,
    owe,
    run_job_at,
    run_job_at_once,
    scalar,
    send,
    start_conversation,
)
from tests.integration.live_server import call, live_server

postgres_only = pytest.mark.postgres_only

CREDIT = 1_000_000


def test_pending_compensations_are_paid_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    charged_messages(app, client, person, fake_providers, 4)
    owe(app, 4)
    now = utcnow()
    results = (
        run_job_at_once(app, "compensations", now, 2)
        if BACKEND == "postgresql"
        else [run_job_at(app, "compensations", now), run_job_at(app, "compensations", now)]
    )
    assert sum(result["paid"] for result in results) == 4
    assert run_job_at(app, "compensations", now + timedelta(hours=1))["paid"] == 0
    # Each paid at its first attempt, and counted once (the run's claim counts it).
    attempts = select(Compensation.status, Compensation.attempts)
    with app.app_context():
        assert db.session.execute(attempts).all() == [("completed", 1)] * 4
        db.session.remove()
    refunds = scalar(
        app, select(func.count()).select_from(LedgerEntry).where(LedgerEntry.type == "refund")
    )
    assert refunds == 4
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "10"
    assert_consistent(app)


def test_a_failing_payment_backs_off_then_fails(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    admin: Person,
) -> None:
    person = person_factory(credits=10 * CREDIT)
    charged_messages(app, client, person, fake_providers, 1)
    owe(app, 1)
    # The database refuses the refund (a real failure inside the payment's transaction).
    with database_refuses(app, "grants"):
        now = utcnow()
        moments = [now]
        for attempt in range(1, 6):
            result = run_job_at(app, "compensations", moments[-1])
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
                    run_job_at(
                        app, "compensations", compensation.next_attempt_at - timedelta(seconds=1)
                    )["paid"]
                    == 0
                )
                moments.append(compensation.next_attempt_at)
        assert compensation.status == "failed"
        assert "refused by the test" in (compensation.last_error or "")
    listed = client.get("/api/admin/credit/compensations?status=failed", headers=admin.headers)
    assert [c["status"] for c in listed.get_json()["items"]] == ["failed"]
    assert listed.get_json()["items"][0]["user_id"] == str(person.id)
    assert_consistent(app)


def test_process_compensations_answers_202_and_lists_by_status(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    admin: Person,
    fake_providers: FakeProviders,
) -> None:
    person = person_factory(credits=10 * CREDIT)
    charged_messages(app, client, person, fake_providers, 2)
    owe(app, 2)
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
def test_with_the_broker_unreachable_processing_fails_fast_and_stores_nothing(
    app: Flask, client: FlaskClient, admin: Person
) -> None:
    database = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    key = {"Idempotency-Key": "process-1"}
    dead_broker = {**database, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    with live_server(dead_broker) as base:
        started = time.monotonic()
        status, _headers, body = call(
            "POST", f"{base}/api/admin/credit/process-compensations", admin.token, headers=key
        )
        took = time.monotonic() - started
    assert (status, json.loads(body)["error"]["code"]) == (503, "service_unavailable")
    assert took < 5
    # Nothing was recorded, and the key is free: the retry runs, it is not a replay of a 202
    # naming a task that was never queued.
    requested = select(func.count()).where(AuditRecord.action == "compensations_requested")
    assert scalar(app, requested) == 0
    retried = client.post(
        "/api/admin/credit/process-compensations", headers={**admin.headers, **key}
    )
    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried.headers
    assert scalar(app, requested) == 1


def test_a_refund_that_cannot_be_paid_at_once_is_paid_by_the_job(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    add_price(app, "openai", "gpt-empty", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-empty")
    # Billed, but no reply: charged, and owed back at once.
    fake_providers.script(
        "openai", Answer(text="", usage={"prompt_tokens": 10, "completion_tokens": 0})
    )
    with database_refuses(app, "grants"):
        response = send(client, person, conversation, key="empty")
    error = assert_error(response, 502, "provider_error")
    assert error["details"]["credits_charged"] == "0.01"
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert balance["balance"] == "9.99"  # charged; the refund could not be paid yet
    with app.app_context():
        compensation = db.session.scalars(select(Compensation)).one()
        assert (compensation.status, compensation.amount) == ("pending", 10_000)
        assert str(compensation.id) == error["details"]["compensation_id"]
        db.session.remove()

    assert run_job_at(app, "compensations", utcnow())["paid"] == 1
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert balance["balance"] == "10"
    assert scalar(app, select(Compensation.status)) == "completed"
    refunds = select(func.count()).select_from(LedgerEntry).where(LedgerEntry.type == "refund")
    assert scalar(app, refunds) == 1
    assert run_job_at(app, "compensations", utcnow() + timedelta(hours=1))["paid"] == 0
    assert_consistent(app)


def test_a_refund_on_a_teams_account_names_the_member_whose_call_it_was(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    owner, member = person_factory(credits=10 * CREDIT), person_factory()
    with app.app_context():
        team_id, team_account = new_team(owner.id, member.id)
        db.session.remove()
    moved = client.post(
        f"/api/teams/{team_id}/transfers",
        json={"amount": "10"},
        headers={**owner.headers, "Idempotency-Key": "fund"},
    )
    assert moved.status_code == 201
    add_price(app, "openai", "gpt-empty", input="1", output="1")
    conversation = start_conversation(client, member, "openai", "gpt-empty")
    fake_providers.script(
        "openai", Answer(text="", usage={"prompt_tokens": 10, "completion_tokens": 0})
    )
    response = send(client, member, conversation, team_id=str(team_id))
    assert assert_error(response, 502, "provider_error")["details"]["credits_charged"] == "0.01"

    team_entries = select(LedgerEntry.type, LedgerEntry.amount, LedgerEntry.user_id).where(
        LedgerEntry.account_id == team_account
    )
    with app.app_context():
        rows = db.session.execute(team_entries.order_by(LedgerEntry.seq)).all()
        db.session.remove()
    assert [tuple(row) for row in rows] == [
        ("transfer_in", 10 * CREDIT, owner.id),
        ("charge", -10_000, member.id),
        ("refund", 10_000, member.id),
    ]
    mine = client.get(f"/api/teams/{team_id}/transactions", headers=member.headers).get_json()
    assert [item["type"] for item in mine["items"]] == ["refund", "charge"]
    assert_consistent(app)
