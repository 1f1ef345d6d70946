"""A call the provider answered is never lost: text the database cannot store is refused before
anything is held, and if the settle transaction fails anyway, the hold is released at once and
the call's usage is kept as unbilled, for admins and reconciliation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.billing.models import UnbilledUsage, UsageRecord
from creditapp.chat.models import Message
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger.models import Hold
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, database_refuses, send, start_conversation

CR = 1_000_000
POISON = "poison pill"
# 1 USD per 1M tokens in and out: 30 + 20 tokens cost 0.05 credits.
USAGE = {"prompt_tokens": 30, "completion_tokens": 20}


@pytest.fixture
def settle_refuses_poison(app: Flask) -> Iterator[None]:
    """The database refuses to store a message saying POISON: the settle transaction fails
    after the provider answered."""
    with database_refuses(app, "messages", f"NEW.content = '{POISON}'"):
        yield


@pytest.fixture
def chat(app: Flask, client: FlaskClient, person_factory: Any) -> tuple[Person, str]:
    person = person_factory(credits=10 * CR)
    add_price(app, "openai", "gpt-settle", input="1", output="1")
    return person, start_conversation(client, person, "openai", "gpt-settle")


def _count(app: Flask, query: Any) -> int:
    with app.app_context():
        total = int(db.session.scalar(query) or 0)
        db.session.remove()
    return total


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"content": "nul \\u0000 inside"}', "content"),
        (b'{"content": "a lone \\ud800 surrogate"}', "content"),
        # Not a field: named as the unknown field it is.
        (b'{"content": "fine", "max_tokens": 5, "\\u0000": 1}', "\x00"),
    ],
)
def test_text_the_database_cannot_store_is_refused_before_anything_is_held(
    app: Flask,
    client: FlaskClient,
    chat: tuple[Person, str],
    fake_providers: FakeProviders,
    body: bytes,
    field: str,
) -> None:
    person, conversation = chat
    response = client.post(
        f"/api/conversations/{conversation}/messages",
        data=body,
        content_type="application/json",
        headers={**person.headers, "Idempotency-Key": "nul-1"},
    )
    assert list(assert_error(response, 400, "validation_error")["details"]) == [field]
    assert fake_providers.calls("openai") == []
    assert _count(app, select(func.count()).select_from(Hold)) == 0


def test_unstorable_text_is_refused_in_every_body_and_query(
    client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    user = person_factory()
    character = client.post(
        "/api/characters",
        json={"name": "Nul\x00", "system_prompt": "x", "provider": "demo", "model": "m"},
        headers=user.headers,
    )
    assert list(assert_error(character, 400, "validation_error")["details"]) == ["name"]
    grant = client.post(
        "/api/admin/credit/grant",
        json={"user_id": str(user.id), "amount": "1", "reason": "\ud800"},
        headers=admin.headers,
    )
    assert list(assert_error(grant, 400, "validation_error")["details"]) == ["reason"]
    audit = client.get("/api/admin/credit/audit?action=%00", headers=admin.headers)
    assert list(assert_error(audit, 400, "validation_error")["details"]) == ["action"]


@pytest.mark.usefixtures("settle_refuses_poison")
def test_a_failed_settle_voids_its_hold_and_keeps_the_usage_as_unbilled(
    app: Flask,
    client: FlaskClient,
    chat: tuple[Person, str],
    fake_providers: FakeProviders,
    admin: Person,
) -> None:
    person, conversation = chat
    fake_providers.script("openai", Answer(text="Answered.", usage=USAGE))

    response = send(client, person, conversation, POISON, key="poison-1")

    assert_error(response, 500, "internal_error")
    assert len(fake_providers.calls("openai")) == 1
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("10", "0")
    with app.app_context():
        hold = db.session.scalars(select(Hold)).one()
        hold_id = hold.id
        assert (hold.status, hold.captured) == ("voided", 0)
        unbilled = db.session.scalars(select(UnbilledUsage)).one()
        assert (unbilled.hold_id, unbilled.input_tokens, unbilled.output_tokens) == (
            hold.id,
            30,
            20,
        )
        assert (unbilled.cost, unbilled.user_id) == (50_000, person.id)
        assert "refused" in unbilled.error
        assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 0
        assert db.session.scalar(select(func.count()).select_from(Message)) == 0
        run_job("reconcile", db.session, now=utcnow(), actor="tests", settings=app.config)
        db.session.remove()

    report = client.get("/api/admin/credit/reconciliation", headers=admin.headers).get_json()
    assert (report["drift"], report["unbilled_calls"], report["unbilled_cost"]) == ([], 1, "0.05")
    listed = client.get("/api/admin/credit/unbilled", headers=admin.headers).get_json()
    assert [(item["hold_id"], item["cost"]) for item in listed["items"]] == [(str(hold_id), "0.05")]
    # The key was freed: the same request runs again (and fails again the same way).
    fake_providers.script("openai", Answer(text="Answered.", usage=USAGE))
    assert_error(send(client, person, conversation, POISON, key="poison-1"), 500, "internal_error")
    assert len(fake_providers.calls("openai")) == 2
    assert _count(app, select(func.count()).select_from(UnbilledUsage)) == 2
