"""Admin credit endpoints over HTTP: grant, adjust, a user's credit, the audit trail."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.chat.models import Message
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Grant, LedgerEntry
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    ADJUST,
    GRANT,
    add_price,
    assert_error,
    charged_messages,
    ledger_rows,
    send,
    start_conversation,
)


@pytest.fixture
def user(person_factory) -> Person:  # type: ignore[no-untyped-def]
    return person_factory()


def test_grant_credits_a_user_with_entry_and_audit(
    app: Flask, client: FlaskClient, admin, user
) -> None:
    response = client.post(
        GRANT,
        headers={**admin.headers, "X-Request-ID": "req-grant-1"},
        json={
            "user_id": str(user.id),
            "amount": "12.5",
            "reason": "support ticket 7",
            "source": "purchase",
        },
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["balance"] == {"balance": "12.5", "reserved": "0", "available": "12.5"}
    assert body["grant"] | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "source": "purchase",
        "amount": "12.5",
        "remaining": "12.5",
        "expires_at": None,
        "period": None,
        "reason": "support ticket 7",
    }
    assert ledger_rows(app) == [("grant", 12_500_000, 12_500_000)]
    with app.app_context():
        audit = db.session.execute(select(AuditRecord)).scalar_one()
        assert (audit.actor_type, audit.actor_id, audit.action) == ("admin", str(admin.id), "grant")
        assert (audit.request_id, audit.client_ip) == ("req-grant-1", "127.0.0.1")
        assert (audit.balance_before, audit.balance_after) == (0, 12_500_000)
        db.session.remove()
    balance = client.get("/api/credit/balance", headers=user.headers).get_json()
    assert balance["balance"] == "12.5"


def test_grant_with_an_expiry(client: FlaskClient, admin, user) -> None:
    expires = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    body = client.post(
        GRANT,
        headers=admin.headers,
        json={
            "user_id": str(user.id),
            "amount": 5,
            "reason": "promo",
            "source": "promo",
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
        },
    ).get_json()
    assert body["grant"]["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert body["grant"]["amount"] == "5"


# Contract section 1: every one of these is a 400 naming the field, and nothing is written.
BAD_AMOUNTS = [
    "0",
    0,
    "-5",
    -5,
    "1.1234567",
    "1e3",
    "NaN",
    "Infinity",
    1.5,
    True,
    "abc",
    "",
    "1000000000.000001",
    1_000_000_001,
    None,
    [],
    {"a": 1},
    " 5",
]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_grant_refuses_bad_amounts(
    app: Flask, client: FlaskClient, admin, user, amount: object
) -> None:
    response = client.post(
        GRANT,
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": amount, "reason": "x"},
    )
    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == ["amount"]
    assert ledger_rows(app) == []


def test_grant_refuses_a_json_float_written_with_a_fraction_of_zero(
    client: FlaskClient, admin, user
) -> None:
    response = client.post(
        GRANT,
        headers=admin.headers,
        content_type="application/json",
        data=f'{{"user_id": "{user.id}", "amount": 5.0, "reason": "x"}}',
    )
    assert list(assert_error(response, 400, "validation_error")["details"]) == ["amount"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"user_id", "amount", "reason"}),
        ({"amount": "1", "reason": "x", "user_id": "abc"}, {"user_id"}),
        ({"amount": "1", "reason": "", "user_id": "1"}, {"reason"}),
        ({"amount": "1", "reason": "x", "user_id": "1", "source": "gift"}, {"source"}),
        ({"amount": "1", "reason": "x", "user_id": "1", "extra": True}, {"extra"}),
        ({"amount": "1", "reason": "x", "user_id": "1", "expires_at": "tomorrow"}, {"expires_at"}),
    ],
)
def test_grant_names_every_bad_field(
    client: FlaskClient, admin, body: dict, fields: set[str]
) -> None:
    error = assert_error(
        client.post(GRANT, headers=admin.headers, json=body), 400, "validation_error"
    )
    assert set(error["details"]) == fields


def test_grant_to_an_unknown_user_is_404(client: FlaskClient, admin) -> None:
    response = client.post(
        GRANT, headers=admin.headers, json={"user_id": "999999", "amount": "1", "reason": "x"}
    )
    assert_error(response, 404, "not_found")


def test_adjust_adds_and_takes_but_never_below_zero(
    app: Flask, client: FlaskClient, admin, user
) -> None:
    up = client.post(
        ADJUST,
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": "10", "reason": "goodwill"},
    )
    assert up.status_code == 200
    assert up.get_json() == {
        "amount": "10",
        "balance": {"balance": "10", "reserved": "0", "available": "10"},
    }
    down = client.post(
        ADJUST,
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": "-2.5", "reason": "correction"},
    )
    assert down.get_json()["balance"]["balance"] == "7.5"
    too_far = client.post(
        ADJUST,
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": "-7.500001", "reason": "x"},
    )
    error = assert_error(too_far, 409, "balance_would_go_negative")
    assert error["details"] == {"requested": "7.500001", "available": "7.5"}
    assert ledger_rows(app) == [
        ("adjust", 10_000_000, 10_000_000),
        ("adjust", -2_500_000, 7_500_000),
    ]


@pytest.mark.parametrize("amount", ["1.0000001", 2.5, "--1", "", None])
def test_adjust_refuses_bad_amounts(client: FlaskClient, admin, user, amount: object) -> None:
    response = client.post(
        ADJUST,
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": amount, "reason": "x"},
    )
    assert list(assert_error(response, 400, "validation_error")["details"]) == ["amount"]


def test_user_credit_view(client: FlaskClient, admin, user) -> None:
    client.post(
        GRANT, headers=admin.headers, json={"user_id": str(user.id), "amount": "3", "reason": "x"}
    )
    body = client.get(f"/api/admin/users/{user.id}/credit", headers=admin.headers).get_json()
    assert (body["user_id"], body["email"], body["balance"], body["available"]) == (
        str(user.id),
        user.email,
        "3",
        "3",
    )
    assert [g["remaining"] for g in body["grants"]] == ["3"]
    assert_error(
        client.get("/api/admin/users/424242/credit", headers=admin.headers), 404, "not_found"
    )
    assert_error(
        client.get("/api/admin/users/abc/credit", headers=admin.headers), 400, "validation_error"
    )


def test_audit_trail_filters_and_pages(client: FlaskClient, admin, person_factory) -> None:
    alice, bob = person_factory(), person_factory()
    for person, amount in ((alice, "1"), (bob, "2"), (alice, "3")):
        client.post(
            GRANT,
            headers=admin.headers,
            json={"user_id": str(person.id), "amount": amount, "reason": "x"},
        )
    client.post(
        ADJUST,
        headers=admin.headers,
        json={"user_id": str(alice.id), "amount": "-1", "reason": "y"},
    )
    everything = client.get("/api/admin/credit/audit", headers=admin.headers).get_json()
    assert [r["action"] for r in everything["items"]] == ["adjust", "grant", "grant", "grant"]
    alices = client.get(
        f"/api/admin/credit/audit?user_id={alice.id}&action=grant", headers=admin.headers
    ).get_json()
    assert [r["details"]["amount"] for r in alices["items"]] == ["3", "1"]
    assert {r["user_id"] for r in alices["items"]} == {str(alice.id)}
    page = client.get("/api/admin/credit/audit?limit=3", headers=admin.headers).get_json()
    rest = client.get(
        f"/api/admin/credit/audit?limit=3&cursor={page['next_cursor']}", headers=admin.headers
    ).get_json()
    assert [r["id"] for r in page["items"] + rest["items"]] == [
        r["id"] for r in everything["items"]
    ]
    future = (utcnow() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    none = client.get(f"/api/admin/credit/audit?from={future}", headers=admin.headers)
    assert none.get_json()["items"] == []
    past = (utcnow() - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    bad = client.get(f"/api/admin/credit/audit?from={future}&to={past}", headers=admin.headers)
    assert set(assert_error(bad, 400, "validation_error")["details"]) == {"from"}


def test_every_admin_change_is_audited_once(app: Flask, client: FlaskClient, admin, user) -> None:
    client.post(
        GRANT, headers=admin.headers, json={"user_id": str(user.id), "amount": "4", "reason": "x"}
    )
    client.post(
        ADJUST, headers=admin.headers, json={"user_id": str(user.id), "amount": "-1", "reason": "y"}
    )
    with app.app_context():
        entries = db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
        audited = db.session.execute(
            select(func.count(func.distinct(LedgerEntry.audit_id)))
        ).scalar_one()
        grants = db.session.execute(select(func.count()).select_from(Grant)).scalar_one()
        db.session.remove()
    assert (entries, audited, grants) == (2, 2, 1)


def test_admins_find_users_by_a_part_of_their_email(
    client: FlaskClient, admin: Person, person_factory, user: Person
) -> None:
    alice = person_factory("alice.smith@example.com")
    alicia = person_factory("alicia@example.org")
    person_factory("bob_jones@example.com")

    def emails(query: str) -> list[str]:
        page = client.get(f"/api/admin/users?{query}", headers=admin.headers).get_json()
        return [item["email"] for item in page["items"]]

    assert emails("q=ALIC") == [alicia.email, alice.email]  # newest first, any case
    assert emails("q=example.org") == [alicia.email]
    assert emails("q=b_j") == ["bob_jones@example.com"]
    assert emails("q=%25") == []  # "%" matches itself, not everything
    first = client.get("/api/admin/users?q=ali&limit=1", headers=admin.headers).get_json()
    assert [item["email"] for item in first["items"]] == [alicia.email]
    after = client.get(
        f"/api/admin/users?q=ali&limit=1&cursor={first['next_cursor']}", headers=admin.headers
    ).get_json()
    assert ([item["email"] for item in after["items"]], after["next_cursor"]) == (
        [alice.email],
        None,
    )
    assert len(emails("")) == 5  # everyone: the admin, the user and the three above
    assert_error(client.get("/api/admin/users", headers=user.headers), 403, "forbidden")


def test_admins_run_reconciliation_now(app: Flask, client: FlaskClient, admin, user) -> None:
    celery = app.extensions["celery"]
    with mock.patch.object(celery, "send_task", wraps=celery.send_task) as send_task:
        response = client.post("/api/admin/credit/reconciliation/run", headers=admin.headers)
    assert response.status_code == 202
    assert len(response.get_json()["task_id"]) == 36
    assert [call.kwargs["args"] for call in send_task.call_args_list] == [("reconcile",)]
    with app.app_context():
        requested = db.session.scalars(
            select(AuditRecord.actor_id).where(AuditRecord.action == "reconciliation_requested")
        ).all()
        db.session.remove()
    assert requested == [str(admin.id)]
    assert_error(
        client.post("/api/admin/credit/reconciliation/run", headers=user.headers),
        403,
        "forbidden",
    )


def test_a_retried_reconciliation_run_queues_one_task_and_replays_the_first_answer(
    app: Flask, client: FlaskClient, admin
) -> None:
    celery = app.extensions["celery"]
    keyed = {**admin.headers, "Idempotency-Key": "reconcile-1"}
    with mock.patch.object(celery, "send_task", wraps=celery.send_task) as send_task:
        first = client.post("/api/admin/credit/reconciliation/run", headers=keyed)
        again = client.post("/api/admin/credit/reconciliation/run", headers=keyed)
    assert (first.status_code, again.status_code) == (202, 202)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert [call.kwargs["args"] for call in send_task.call_args_list] == [("reconcile",)]
    with app.app_context():
        requested = db.session.scalars(
            select(AuditRecord.actor_id).where(AuditRecord.action == "reconciliation_requested")
        ).all()
        db.session.remove()
    assert requested == [str(admin.id)]


def test_compensations_name_the_users_email(
    app: Flask, client: FlaskClient, admin: Person, person_factory, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10_000_000)
    (reply_id,) = charged_messages(app, client, person, fake_providers, 1)
    refunded = client.post(
        "/api/admin/credit/refund",
        json={"message_id": reply_id, "reason": "bad answer"},
        headers=admin.headers,
    )
    assert refunded.status_code == 201
    listed = client.get("/api/admin/credit/compensations", headers=admin.headers).get_json()
    assert [(c["user_id"], c["user_email"], c["amount"]) for c in listed["items"]] == [
        (str(person.id), person.email, "0.2")
    ]


def test_the_price_book_is_searched_by_a_part_of_a_name(
    app: Flask, client: FlaskClient, admin: Person, user: Person
) -> None:
    add_price(app, "openai", "gpt-4o-mini", input="1", output="2")
    add_price(app, "anthropic", "claude-test", input="3", output="4")
    add_price(app, "openai", "gpt_5", input="5", output="6")

    def models(query: str) -> list[str]:
        page = client.get(f"/api/admin/pricing?{query}", headers=admin.headers).get_json()
        return [item["model"] for item in page["items"]]

    assert models("q=GPT") == ["gpt_5", "gpt-4o-mini"]  # newest first, any case
    assert models("q=anthrop") == ["claude-test"]  # the provider's name too
    assert models("q=t_5") == ["gpt_5"]
    assert models("q=%25") == []  # "%" matches itself, not everything
    assert models("q=gpt&provider=anthropic") == []
    first = client.get("/api/admin/pricing?q=gpt&limit=1", headers=admin.headers).get_json()
    after = client.get(
        f"/api/admin/pricing?q=gpt&limit=1&cursor={first['next_cursor']}", headers=admin.headers
    ).get_json()
    assert [item["model"] for item in first["items"] + after["items"]] == ["gpt_5", "gpt-4o-mini"]
    assert after["next_cursor"] is None
    empty = client.get("/api/admin/pricing?q=", headers=admin.headers)
    assert_error(empty, 400, "validation_error")
    assert_error(client.get("/api/admin/pricing?q=gpt", headers=user.headers), 403, "forbidden")


def test_the_audit_trail_names_the_users_email(client: FlaskClient, admin: Person, user) -> None:
    client.post(
        GRANT, headers=admin.headers, json={"user_id": str(user.id), "amount": "1", "reason": "x"}
    )
    client.put(
        "/api/admin/pricing",
        headers=admin.headers,
        json={"provider": "openai", "model": "gpt-audit", "input": "1", "output": "2"},
    )
    trail = client.get("/api/admin/credit/audit", headers=admin.headers).get_json()["items"]
    assert [(r["action"], r["user_id"], r["user_email"]) for r in trail][-1] == (
        "grant",
        str(user.id),
        user.email,
    )
    assert {r["user_email"] for r in trail if r["user_id"] is None} == {None}
    assert len(trail) > 1


def test_a_users_charge_names_the_message_an_admin_refunds(
    app: Flask, client: FlaskClient, admin: Person, person_factory, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10_000_000)
    charged_messages(app, client, person, fake_providers, 1)
    transactions = f"/api/admin/users/{person.id}/transactions"
    entries = client.get(transactions, headers=admin.headers).get_json()["items"]
    assert [entry["type"] for entry in entries] == ["charge", "grant"]
    charge, grant = (
        client.get(f"{transactions}/{entry['id']}", headers=admin.headers).get_json()
        for entry in entries
    )
    with app.app_context():
        question_id = db.session.scalar(select(Message.id).where(Message.role == "user"))
        db.session.remove()
    assert (charge["message_id"], charge["receipt"]["charged"]) == (str(question_id), "0.2")
    assert (grant["message_id"], grant["receipt"]) == (None, None)
    refunded = client.post(
        "/api/admin/credit/refund",
        json={"message_id": charge["message_id"], "reason": "bad answer"},
        headers=admin.headers,
    )
    assert refunded.status_code == 201
    assert refunded.get_json()["balance"]["balance"] == "10"


def test_an_admin_sees_what_each_of_a_users_transactions_was_for_and_a_refund_as_a_refund(
    app: Flask, client: FlaskClient, admin: Person, person_factory, fake_providers: FakeProviders
) -> None:
    """As the user's own dashboard says it: a charge names its character and model, a refund
    and an adjustment their reason; the refund's grant came from a refund, not only an admin."""
    add_price(app, "openai", "gpt-described", input="1", output="2")
    person = person_factory(credits=10_000_000)
    conversation = start_conversation(client, person, "openai", "gpt-described")
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    reply_id = send(client, person, conversation).get_json()["reply"]["id"]
    for path, body in (
        ("refund", {"message_id": reply_id, "reason": "bad answer"}),
        ("adjust", {"user_id": str(person.id), "amount": "2", "reason": "outage credit"}),
    ):
        made = client.post(f"/api/admin/credit/{path}", json=body, headers=admin.headers)
        assert made.status_code in (200, 201), made.get_json()

    transactions = f"/api/admin/users/{person.id}/transactions"
    plain = client.get(transactions, headers=admin.headers).get_json()["items"]
    assert "description" not in plain[0]
    items = client.get(f"{transactions}?describe=true", headers=admin.headers).get_json()["items"]
    assert [(item["type"], item["amount"], item["description"]) for item in items] == [
        ("adjust", "2", "Adjustment: outage credit"),
        ("refund", "0.2", f"Refund of message {reply_id}: bad answer"),
        ("charge", "-0.2", "Chat with Tester (openai:gpt-described)"),
        ("grant", "10", "Promo: test credits"),
    ]
    charges = client.get(f"{transactions}?type=charge&describe=true", headers=admin.headers)
    assert [item["description"] for item in charges.get_json()["items"]] == [
        "Chat with Tester (openai:gpt-described)"
    ]
    credit = client.get(f"/api/admin/users/{person.id}/credit", headers=admin.headers).get_json()
    assert sorted((g["source"], g["origin"], g["reason"]) for g in credit["grants"]) == [
        ("admin", "adjust", "outage credit"),
        ("admin", "refund", f"refund of message {reply_id}: bad answer"),
        ("promo", "grant", "test credits"),
    ]
