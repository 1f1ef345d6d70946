"""Admin pricing, tiers and refunds over HTTP, and the bundled catalogue's sync."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from creditapp.pricing.models import Price
from tests.conftest import Person, utcnow
from tests.helpers import assert_error

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
        ({"input": "0", "output": "0.000"}, "output"),  # a call would be charged nothing
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


def test_a_price_of_cache_writes_only_charges_something(client: FlaskClient, admin: Person) -> None:
    """Input and output free but cache writes not: a call holds (every input token at the
    highest input rate) and is charged for what it writes, so the row is not refused."""
    row = {**PRICE, "input": "0", "output": "0", "cached_input": "0", "cache_write": "0.5"}
    assert client.put("/api/admin/pricing", json=row, headers=admin.headers).status_code == 201


# Decimals `int` and `Decimal` read and the contract refuses; "-0" was stored and echoed back.
NOT_ASCII_DECIMALS = ["\uff11\uff12", "\u0663", "1_000", "+5", " 5 ", "5\n", "-0", "-0.0"]


@pytest.mark.parametrize("field", ["input", "output", "cached_input", "cache_write"])
@pytest.mark.parametrize("price", NOT_ASCII_DECIMALS)
def test_prices_are_strict_ascii_decimals(
    app: Flask, client: FlaskClient, admin: Person, field: str, price: str
) -> None:
    response = client.put("/api/admin/pricing", json={**PRICE, field: price}, headers=admin.headers)
    assert list(assert_error(response, 400, "validation_error")["details"]) == [field]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Price)) == 0
        db.session.remove()


@pytest.mark.parametrize("credits", NOT_ASCII_DECIMALS)
def test_a_tiers_monthly_credits_are_strict_ascii_decimals(
    client: FlaskClient, admin: Person, credits: str
) -> None:
    response = client.put(
        "/api/admin/tiers", json={**TIER, "monthly_credits": credits}, headers=admin.headers
    )
    assert list(assert_error(response, 400, "validation_error")["details"]) == ["monthly_credits"]


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
        ({"name": "pro\n"}, "name"),  # a second "pro", were `$` allowed before a newline
        ({"allowed_models": ["openai:gpt-4\n"]}, "allowed_models"),
        ({"rate_limits": {"spending": "5 per minute\n"}}, "rate_limits"),
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
