"""Refunds of a message's charge by an admin: at most once, as a never-expiring grant."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.chat.models import Compensation, Message
from creditapp.extensions import db
from creditapp.ledger.models import LedgerEntry
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation


def test_a_message_is_refunded_at_most_once(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    add_price(app, "openai", "gpt-test", input="1", output="2")
    user = person_factory(credits=10_000_000)
    conversation = start_conversation(client, user, "openai", "gpt-test")
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    reply_id = send(client, user, conversation).get_json()["reply"]["id"]
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
