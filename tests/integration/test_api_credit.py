"""The caller's own credits over HTTP: balance, grants, transactions (contract section 5)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from dateutil.relativedelta import relativedelta
from flask import Flask
from flask.testing import FlaskClient

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation

CR = 1_000_000


def grant(app: Flask, person: Person, amount: int, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        with write_transaction(db.session):
            result = ledger.grant(
                db.session,
                account_id=person.account_id,
                amount=amount,
                source=kwargs.pop("source", "promo"),
                reason=kwargs.pop("reason", "test"),
                context=TEST_CONTEXT,
                now=kwargs.pop("now", utcnow()),
                **kwargs,
            )
        db.session.remove()
    return result.grant_id


def hold(app: Flask, person: Person, amount: int, reference: str | None = None):  # type: ignore[no-untyped-def]
    with app.app_context():
        with write_transaction(db.session):
            held = ledger.hold(
                db.session,
                account_id=person.account_id,
                amount=amount,
                ttl=timedelta(minutes=5),
                context=TEST_CONTEXT,
                now=utcnow(),
                reference=reference,
            )
        db.session.remove()
    return held


def test_balance_of_a_new_free_user_shows_the_first_subscription(
    client: FlaskClient, person_factory
) -> None:
    person = person_factory(tier="free")
    body = client.get("/api/credit/balance", headers=person.headers).get_json()
    refreshed = body.pop("last_credit_refresh")
    assert body == {
        "balance": "100",
        "reserved": "0",
        "available": "100",
        "tier": "free",
        "next_refresh_at": body["next_refresh_at"],
    }

    anchor = datetime.fromisoformat(refreshed.replace("Z", "+00:00"))
    assert body["next_refresh_at"] == (anchor + relativedelta(months=1)).isoformat().replace(
        "+00:00", "Z"
    )


def test_balance_shows_holds_and_never_expired_credits(
    app: Flask, client: FlaskClient, person_factory
) -> None:
    person = person_factory()
    an_hour_ago = utcnow() - timedelta(hours=1)
    grant(app, person, 12_500_000)
    grant(app, person, 3 * CR, expires_at=utcnow() + timedelta(hours=1))
    hold(app, person, 2 * CR)
    # Last, as of an hour ago: expired half an hour ago, and no operation has written it off.
    grant(app, person, 4 * CR, now=an_hour_ago, expires_at=an_hour_ago + timedelta(minutes=30))
    body = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (body["balance"], body["reserved"], body["available"]) == ("15.5", "2", "13.5")
    assert body["next_refresh_at"] is None and body["last_credit_refresh"] is None


def test_grants_are_listed_newest_first_with_cursor_pages(
    app: Flask, client: FlaskClient, person_factory
) -> None:
    person = person_factory()
    ids = [grant(app, person, (n + 1) * CR) for n in range(5)]
    first = client.get("/api/credit/grants?limit=2", headers=person.headers).get_json()
    assert [item["id"] for item in first["items"]] == [str(ids[4]), str(ids[3])]
    assert first["items"][0] | {"created_at": None} == {
        "id": str(ids[4]),
        "source": "promo",
        "amount": "5",
        "remaining": "5",
        "expires_at": None,
        "period": None,
        "reason": "test",
        "created_at": None,
        "status": "active",
        "origin": "grant",
    }
    second = client.get(
        f"/api/credit/grants?limit=2&cursor={first['next_cursor']}", headers=person.headers
    ).get_json()
    third = client.get(
        f"/api/credit/grants?limit=2&cursor={second['next_cursor']}", headers=person.headers
    ).get_json()
    assert [i["id"] for i in second["items"] + third["items"]] == [str(i) for i in ids[2::-1]]
    assert third["next_cursor"] is None


def test_transaction_pages_are_stable_under_concurrent_inserts(
    app: Flask, client: FlaskClient, person_factory
) -> None:
    person = person_factory()
    for n in range(4):
        grant(app, person, (n + 1) * CR)
    first = client.get("/api/credit/transactions?limit=2", headers=person.headers).get_json()
    assert [item["amount"] for item in first["items"]] == ["4", "3"]
    grant(app, person, 9 * CR)  # arrives between two page reads
    second = client.get(
        f"/api/credit/transactions?limit=2&cursor={first['next_cursor']}", headers=person.headers
    ).get_json()
    assert [item["amount"] for item in second["items"]] == ["2", "1"]
    assert second["next_cursor"] is None
    assert second["items"][0]["balance_after"] == "3"
    newest = client.get("/api/credit/transactions?limit=1", headers=person.headers).get_json()
    assert newest["items"][0]["amount"] == "9" and newest["items"][0]["balance_after"] == "19"


def test_transactions_filter_by_type_and_carry_the_signed_amount(
    app: Flask, client: FlaskClient, person_factory
) -> None:
    person = person_factory()
    grant(app, person, 10 * CR)
    held = hold(app, person, 2 * CR, reference="message:42")
    with app.app_context():
        with write_transaction(db.session):
            ledger.settle(
                db.session,
                hold_id=held.hold_id,
                actual=1_250_000,
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    body = client.get("/api/credit/transactions?type=charge", headers=person.headers).get_json()
    assert [
        (i["type"], i["amount"], i["balance_after"], i["reference"]) for i in body["items"]
    ] == [("charge", "-1.25", "8.75", "message:42")]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=abc", "cursor=%%%", "cursor=djE6eA", "type=bogus", "unknown=1"],
)
def test_bad_list_parameters_get_400(client: FlaskClient, person_factory, query: str) -> None:
    person = person_factory()
    path = "/api/credit/transactions" if "type" in query else "/api/credit/grants"
    error = assert_error(
        client.get(f"{path}?{query}", headers=person.headers), 400, "validation_error"
    )
    assert set(error["details"]) == {query.split("=")[0]}


def test_each_user_sees_only_their_own_credits(
    app: Flask, client: FlaskClient, person_factory
) -> None:
    alice, bob = person_factory(), person_factory()
    grant(app, alice, 7 * CR)
    assert client.get("/api/credit/balance", headers=bob.headers).get_json()["balance"] == "0"
    assert client.get("/api/credit/grants", headers=bob.headers).get_json()["items"] == []
    assert client.get("/api/credit/transactions", headers=bob.headers).get_json()["items"] == []


def test_each_transaction_says_what_it_was_for_and_a_refund_is_a_refund(
    app: Flask,
    client: FlaskClient,
    person_factory,
    admin: Person,
    fake_providers: FakeProviders,
) -> None:
    """A charge names the character and the model of its call, a grant its source and reason,
    an adjustment and a refund their reason; the refund's grant says it came from a refund,
    not only from an admin."""
    add_price(app, "openai", "gpt-described", input="1", output="2")
    person = person_factory(credits=10 * CR)
    conversation = start_conversation(client, person, "openai", "gpt-described")
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    reply_id = send(client, person, conversation).get_json()["reply"]["id"]
    for path, body in (
        ("refund", {"message_id": reply_id, "reason": "bad answer"}),
        ("adjust", {"user_id": str(person.id), "amount": "-1.5", "reason": "duplicate promo"}),
        ("adjust", {"user_id": str(person.id), "amount": "2", "reason": "outage credit"}),
    ):
        made = client.post(f"/api/admin/credit/{path}", json=body, headers=admin.headers)
        assert made.status_code in (200, 201), made.get_json()

    path = "/api/credit/transactions"
    assert "description" not in client.get(path, headers=person.headers).get_json()["items"][0]
    items = client.get(f"{path}?describe=true", headers=person.headers).get_json()["items"]
    assert [(item["type"], item["amount"], item["description"]) for item in items] == [
        ("adjust", "2", "Adjustment: outage credit"),
        ("adjust", "-1.5", "Adjustment: duplicate promo"),
        ("refund", "0.2", f"Refund of message {reply_id}: bad answer"),
        ("charge", "-0.2", "Chat with Tester (openai:gpt-described)"),
        ("grant", "10", "Promo: test credits"),
    ]
    grants = client.get("/api/credit/grants", headers=person.headers).get_json()["items"]
    assert [(g["source"], g["origin"], g["reason"]) for g in grants] == [
        ("admin", "adjust", "outage credit"),
        ("admin", "refund", f"refund of message {reply_id}: bad answer"),
        ("promo", "grant", "test credits"),
    ]


def test_a_charge_through_the_gateway_names_the_key_it_was_made_with(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    add_price(app, "openai", "gpt-keyed", input="1", output="2")
    person = person_factory(credits=10 * CR)
    made = client.post("/api/keys", json={"name": "laptop"}, headers=person.headers)
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    called = client.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-keyed", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Bearer {made.get_json()['key']}"},
    )
    assert called.status_code == 200, called.get_json()
    path = "/api/credit/transactions?describe=true"
    items = client.get(path, headers=person.headers).get_json()["items"]
    assert [(item["type"], item["amount"], item["description"]) for item in items] == [
        ("charge", "-0.2", "API key “laptop”: Call to openai:gpt-keyed"),
        ("grant", "10", "Promo: test credits"),
    ]


def test_the_document_says_a_description_comes_only_when_asked(client: FlaskClient) -> None:
    """Both lists of transactions (the user's and an admin's of a user) answer the same entries;
    `description` is theirs only with `describe=true`, and the document says so."""
    document = client.get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]

    def item_of(path: str) -> dict:
        answer = document["paths"][path]["get"]["responses"]["200"]["content"]
        page = answer["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        return schemas[schemas[page]["properties"]["items"]["items"]["$ref"].rsplit("/", 1)[-1]]

    item = item_of("/api/credit/transactions")
    assert item == item_of("/api/admin/users/{user_id}/transactions")
    assert "description" not in item.get("required", [])
    assert "only" in item["properties"]["description"]["description"]
    assert "`describe=true`" in item["properties"]["description"]["description"]
