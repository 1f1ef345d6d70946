"""Refunds of a message's charge by an admin: at most once, as a never-expiring grant."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.billing.models import Compensation
from creditapp.chat.models import Message
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Grant, LedgerEntry
from tests.conftest import Person
from tests.fake_providers import FakeProviders
from tests.helpers import (
    assert_consistent,
    assert_error,
    charged_messages,
    ledger_rows,
)
from tests.integration.live_server import call, live_server


def test_a_message_is_refunded_at_most_once(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    user = person_factory(credits=10_000_000)
    (reply_id,) = charged_messages(app, client, user, fake_providers, 1)
    assert client.get("/api/credit/balance", headers=user.headers).get_json()["balance"] == "9.8"

    refunded = client.post(
        "/api/admin/credit/refund",
        json={"message_id": reply_id, "reason": "bad answer"},
        headers=admin.headers,
    )
    assert refunded.status_code == 201
    body = refunded.get_json()
    assert (body["amount"], body["status"], body["balance"]["balance"]) == (
        "0.2",
        "completed",
        "10",
    )
    with app.app_context():
        question_id = db.session.scalar(select(Message.id).where(Message.role == "user"))
    again = client.post(
        "/api/admin/credit/refund",
        json={"message_id": str(question_id), "reason": "again"},
        headers=admin.headers,
    )
    assert_error(again, 409, "already_refunded")
    with app.app_context():
        refunds = db.session.scalars(
            select(LedgerEntry.amount).where(LedgerEntry.type == "refund")
        ).all()
        assert refunds == [200_000]
        assert db.session.scalar(select(func.count()).select_from(Compensation)) == 1
    assert_error(
        client.post(
            "/api/admin/credit/refund",
            json={"message_id": "424242", "reason": "x"},
            headers=admin.headers,
        ),
        404,
        "not_found",
    )
    assert_error(
        client.post(
            "/api/admin/credit/refund", json={"message_id": reply_id}, headers=admin.headers
        ),
        400,
        "validation_error",
    )


@pytest.mark.parametrize("character", ["x", "\u00e9", "\U0001f600"])
@pytest.mark.parametrize("length", [480, 490, 500])
def test_a_reason_as_long_as_allowed_is_stored_cut_to_its_column(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
    length: int,
    character: str,
) -> None:
    """The stored reason is "refund of message N: " and the admin's reason: beyond the
    column's 500 characters it ends in an ellipsis where it was cut (characters, not bytes)."""
    user = person_factory(credits=10_000_000)
    (reply_id,) = charged_messages(app, client, user, fake_providers, 1)
    reason = character * length

    refunded = client.post(
        "/api/admin/credit/refund",
        json={"message_id": reply_id, "reason": reason},
        headers=admin.headers,
    )

    assert refunded.status_code == 201, refunded.get_json()
    assert refunded.get_json()["balance"]["balance"] == "10"
    prefix = f"refund of message {reply_id}: "
    stored = prefix + character * (499 - len(prefix)) + "\u2026"
    assert len(stored) == 500
    with app.app_context():
        assert db.session.scalars(select(Compensation.reason)).all() == [stored]
        assert db.session.scalars(select(Grant.reason).where(Grant.source == "admin")).all() == [
            stored
        ]
        audit = db.session.scalars(
            select(AuditRecord.details).where(AuditRecord.action == "refund")
        ).all()
        assert [details["reason"] for details in audit] == [stored]
        db.session.remove()
    assert ledger_rows(app)[-1] == ("refund", 200_000, 10_000_000)


@pytest.mark.postgres_only
@pytest.mark.real_clock
def test_ten_refunds_of_one_user_at_once_all_succeed(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    """Each refund inserts its compensation (a foreign-key check locks the account row KEY
    SHARE) before the ledger locks that row to refund: the ledger's lock must not conflict with
    another refund's KEY SHARE, or two refunds deadlock and one answers 503."""
    user = person_factory(credits=10_000_000)
    replies = charged_messages(app, client, user, fake_providers, 10)
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "DATABASE_POOL_SIZE": "10",
        "RATELIMIT_ENABLED": "false",
    }
    with live_server(env, workers=2, threads=5) as base:
        barrier = threading.Barrier(10)

        def refund(reply_id: str) -> int:
            body = json.dumps({"message_id": reply_id, "reason": "concurrent"}).encode()
            barrier.wait(timeout=30)
            status, _headers, _body = call(
                "POST", f"{base}/api/admin/credit/refund", admin.token, body
            )
            return int(status)

        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(refund, replies))

    assert statuses == [201] * 10
    rows = ledger_rows(app)
    # The promo grant, ten charges of 0.2, then ten refunds of 0.2 in whatever order they ran.
    assert rows[:11] == [("grant", 10_000_000, 10_000_000)] + [
        ("charge", -200_000, 10_000_000 - 200_000 * n) for n in range(1, 11)
    ]
    assert rows[11:] == [("refund", 200_000, 8_000_000 + 200_000 * n) for n in range(1, 11)]
    with app.app_context():
        assert db.session.scalars(select(Compensation.status)).all() == ["completed"] * 10
        db.session.remove()
    assert_consistent(app)
