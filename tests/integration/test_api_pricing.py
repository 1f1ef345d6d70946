"""Admin pricing, tiers and refunds over HTTP, and the bundled catalogue's sync."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.chat.models import Compensation, Message
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, LedgerEntry
from creditapp.pricing import catalogue
from creditapp.pricing.models import Price
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.integration.chat import add_price, send, start_conversation
from tests.integration.test_http_conventions import assert_error

PRICE = {"provider": "openai", "model": "gpt-new", "input": "2.5", "output": "10"}
TIER = {
    "name": "plus",
    "monthly_credits": "250",
    "allowed_models": ["openai:*", "anthropic:claude-test"],
    "default_max_tokens": 100,
    "max_max_tokens": 200,
}


def test_admins_add_price_rows_and_old_rows_stay(
    app: Flask, client: FlaskClient, admin: Person
) -> None:
    first = client.put("/api/admin/pricing", json=PRICE, headers=admin.headers)
    assert first.status_code == 201
    later = utcnow() + timedelta(days=1)
    second = client.put(
        "/api/admin/pricing",
        json={
            **PRICE,
            "input": "3",
            "cached_input": "0.3",
            "cache_write": 4,
            "effective_from": later.isoformat(),
        },
        headers=admin.headers,
    )
    assert second.status_code == 201
    body = second.get_json()
    assert (body["input"], body["cached_input"], body["cache_write"], body["output"]) == (
        "3",
        "0.3",
        "4",
        "10",
    )
    assert body["source"] == f"admin:{admin.id}"

    listed = client.get("/api/admin/pricing?model=gpt-new", headers=admin.headers).get_json()
    assert [p["input"] for p in listed["items"]] == ["3", "2.5"]
    with app.app_context():
        actions = db.session.scalars(
            select(AuditRecord.action).where(AuditRecord.action == "price_added")
        ).all()
        assert actions == ["price_added", "price_added"]
    duplicate = client.put(
        "/api/admin/pricing",
        json={**PRICE, "effective_from": later.isoformat()},
        headers=admin.headers,
    )
    assert_error(duplicate, 409, "conflict")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"provider": "mistral"}, "provider"),
        ({"model": ""}, "model"),
        ({"input": "-1"}, "input"),
        ({"input": "1e3"}, "input"),
        ({"input": "NaN"}, "input"),
        ({"input": "abc"}, "input"),
        ({"input": 2.5}, "input"),
        ({"input": True}, "input"),
        ({"output": None}, "output"),
        ({"cached_input": "-0.1"}, "cached_input"),
        ({"effective_from": "2020-01-01T00:00:00Z"}, "effective_from"),
        ({"effective_from": "yesterday"}, "effective_from"),
    ],
)
def test_bad_prices_are_400_naming_the_field(
    client: FlaskClient, admin: Person, change: dict[str, Any], field: str
) -> None:
    error = assert_error(
        client.put("/api/admin/pricing", json={**PRICE, **change}, headers=admin.headers),
        400,
        "validation_error",
    )
    assert field in error["details"]


def test_pricing_and_tiers_are_for_admins_only(client: FlaskClient, person_factory: Any) -> None:
    user = person_factory()
    for method, path, body in (
        ("get", "/api/admin/pricing", None),
        ("put", "/api/admin/pricing", PRICE),
        ("get", "/api/admin/tiers", None),
        ("put", "/api/admin/tiers", TIER),
        ("put", f"/api/admin/users/{user.id}/tier", {"tier": "pro"}),
        ("post", "/api/admin/credit/refund", {"message_id": "1", "reason": "x"}),
    ):
        response = getattr(client, method)(path, json=body, headers=user.headers)
        assert_error(response, 403, "forbidden")


def test_tiers_are_created_updated_listed_and_assigned(
    app: Flask, client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    created = client.put("/api/admin/tiers", json=TIER, headers=admin.headers)
    assert created.status_code == 200
    assert created.get_json() == {
        **TIER,
        "allowed_models": sorted(TIER["allowed_models"]),
        "rate_limits": None,
    }
    updated = client.put(
        "/api/admin/tiers",
        json={**TIER, "monthly_credits": 0, "rate_limits": {"spending": "60 per minute"}},
        headers=admin.headers,
    ).get_json()
    assert (updated["monthly_credits"], updated["rate_limits"]) == (
        "0",
        {"spending": "60 per minute"},
    )
    names = [
        t["name"] for t in client.get("/api/admin/tiers", headers=admin.headers).get_json()["items"]
    ]
    assert "plus" in names and "free" in names

    user = person_factory()
    assert client.put(
        f"/api/admin/users/{user.id}/tier", json={"tier": "plus"}, headers=admin.headers
    ).get_json() == {"user_id": str(user.id), "tier": "plus"}
    assert client.get("/api/credit/balance", headers=user.headers).get_json()["tier"] == "plus"
    assert_error(
        client.put(
            f"/api/admin/users/{user.id}/tier", json={"tier": "gold"}, headers=admin.headers
        ),
        400,
        "validation_error",
    )
    assert_error(
        client.put("/api/admin/users/999999/tier", json={"tier": "plus"}, headers=admin.headers),
        404,
        "not_found",
    )
    with app.app_context():
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(AuditRecord)
                .where(AuditRecord.action == "tier_assigned")
            )
            == 1
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Has Spaces"}, "name"),
        ({"monthly_credits": "-1"}, "monthly_credits"),
        ({"allowed_models": ["gpt-4"]}, "allowed_models"),
        ({"allowed_models": "*"}, "allowed_models"),
        ({"default_max_tokens": 0}, "default_max_tokens"),
        ({"max_max_tokens": 50}, "max_max_tokens"),
        ({"rate_limits": {"spending": "lots"}}, "rate_limits"),
    ],
)
def test_bad_tiers_are_400(
    client: FlaskClient, admin: Person, change: dict[str, Any], field: str
) -> None:
    error = assert_error(
        client.put("/api/admin/tiers", json={**TIER, **change}, headers=admin.headers),
        400,
        "validation_error",
    )
    assert field in error["details"]


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


def test_the_catalogue_sync_seeds_dated_and_tiered_prices_once(app: Flask) -> None:
    now = utcnow()
    with app.app_context():
        with write_transaction(db.session):
            first = catalogue.sync(db.session, now=now)
        with write_transaction(db.session):
            second = catalogue.sync(db.session, now=now + timedelta(minutes=1))
        assert first.catalogue_version.startswith("genai-prices ")
        assert first.added > 100 and second.added == 0
        rows = db.session.scalars(
            select(Price).where(Price.provider == "anthropic", Price.model == "claude-3-5-sonnet")
        ).all()
        assert [(r.input, r.cached_input, r.cache_write, r.output) for r in rows] == [
            (Decimal("3"), Decimal("0.3"), Decimal("3.75"), Decimal("15"))
        ]
        assert rows[0].source == first.catalogue_version
        # A model priced by prompt size keeps its tiers; one with dated prices gets a row per date.
        gemini = db.session.scalars(
            select(Price).where(Price.provider == "google", Price.model == "gemini-2.5-pro")
        ).one()
        assert gemini.prompt_tiers == [
            {
                "above_input_tokens": 200000,
                "input": "2.5",
                "output": "15",
                "cached_input": "0.25",
                "cache_write": None,
            }
        ]
        o3 = db.session.scalars(
            select(Price.effective_from)
            .where(Price.provider == "openai", Price.model == "o3")
            .order_by(Price.effective_from)
        ).all()
        assert [moment.date().isoformat() for moment in o3] == ["2000-01-01", "2025-06-10"]
        db.session.remove()


def test_the_sync_never_rewrites_history_and_adds_a_changed_current_price(app: Flask) -> None:
    earlier = add_price(app, "anthropic", "claude-3-5-sonnet", input="9", output="9")
    now = utcnow()
    with app.app_context():
        with write_transaction(db.session):
            catalogue.sync(db.session, now=now)
        rows = db.session.execute(
            select(Price.id, Price.input, Price.effective_from)
            .where(Price.provider == "anthropic", Price.model == "claude-3-5-sonnet")
            .order_by(Price.effective_from)
        ).all()
        db.session.remove()
    assert [(row.id, row.input) for row in rows] == [
        (earlier, Decimal("9")),
        (rows[1].id, Decimal("3")),
    ]
    assert rows[1].effective_from == now
