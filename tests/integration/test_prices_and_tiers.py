"""Admin pricing, tiers and refunds over HTTP, and the bundled catalogue's sync."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.auth import tiers
from creditapp.auth.models import Tier
from creditapp.database import write_transaction
from creditapp.errors import Conflict
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from creditapp.pricing import book
from creditapp.pricing.models import Price
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.helpers import assert_error, run_job_at

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


def test_a_period_has_one_grant_of_the_tier_the_user_was_on_when_it_was_made(
    app: Flask, client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    """Moved to `pro`, a user granted `free`'s 100 credits for the period keeps them until the
    period ends; a user whose period had no grant (a tier without credits) gets `pro`'s 5,000
    for the period in progress, from the next refresh."""
    on_free = person_factory(tier="free")
    unfunded = person_factory()
    for person in (on_free, unfunded):
        moved = client.put(
            f"/api/admin/users/{person.id}/tier", json={"tier": "pro"}, headers=admin.headers
        )
        assert moved.status_code == 200
    assert run_job_at(app, "refresh", utcnow()) == {"checked": 1, "granted": 1}
    balances = [
        client.get("/api/credit/balance", headers=person.headers).get_json()
        for person in (on_free, unfunded)
    ]
    assert [(b["tier"], b["balance"]) for b in balances] == [("pro", "100"), ("pro", "5000")]


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


@pytest.mark.parametrize("cache", [{"cache_write": "0.5"}, {"cached_input": "0.1"}])
def test_a_price_of_cache_rates_only_is_refused(
    client: FlaskClient, admin: Person, cache: dict[str, str]
) -> None:
    """Input and output free: every call that reads and writes no cache, most of them, would
    be charged nothing."""
    row = {**PRICE, "input": "0", "output": "0", "cached_input": "0", **cache}
    error = assert_error(
        client.put("/api/admin/pricing", json=row, headers=admin.headers), 400, "validation_error"
    )
    assert error["details"] == {
        "output": ["Input and output cannot both be 0: a call is never charged nothing."]
    }


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
        ({"rate_limits": {"spending": "0 per minute"}}, "rate_limits"),
        ({"rate_limits": {"default": "10 per 0 minutes"}}, "rate_limits"),
        ({"rate_limits": {"default": "010 per minute"}}, "rate_limits"),
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


def _second_while_first_is_open(app: Flask, first: Any, second: Any) -> Any:
    """`second` (in a thread, a transaction of its own) starts while `first`'s transaction has
    written and not committed: what `second` returned, or raised."""
    outcome: list[Any] = []

    def run_second() -> None:
        with app.app_context():
            try:
                with write_transaction(db.session):
                    outcome.append(second(db.session))
            except Exception as error:  # the outcome tested
                outcome.append(error)
            finally:
                db.session.remove()

    with app.app_context():
        with write_transaction(db.session):
            first(db.session)
            other = threading.Thread(target=run_second)
            other.start()
            time.sleep(0.5)  # the second waits on the first's row, or would pass it
        db.session.remove()
    other.join(timeout=30)
    (result,) = outcome
    return result


@pytest.mark.postgres_only
def test_two_admins_creating_one_tier_at_once_both_succeed(app: Flask) -> None:
    def put(credits: int) -> Any:
        def apply(session: Any) -> Any:
            return tiers.put(
                session,
                name="rush",
                monthly_credits=credits,
                allowed_models=["*"],
                default_max_tokens=10,
                max_max_tokens=20,
                rate_limits=None,
                context=TEST_CONTEXT,
                now=utcnow(),
            )

        return apply

    second = _second_while_first_is_open(app, put(1), put(2))
    assert not isinstance(second, Exception), second
    with app.app_context():
        tier = db.session.get(Tier, "rush")
        assert tier is not None and tier.monthly_credits == 2
        actions = db.session.scalars(
            select(AuditRecord.action).where(AuditRecord.action.like("tier_%"))
        ).all()
        assert sorted(actions) == ["tier_created", "tier_updated"]
        db.session.remove()


@pytest.mark.postgres_only
def test_two_prices_of_one_model_at_one_moment_at_once_are_a_409(app: Flask) -> None:
    moment = utcnow() + timedelta(hours=1)

    def put(session: Any) -> Any:
        return book.put(
            session,
            provider="openai",
            model="gpt-rush",
            rates=book.Rates(Decimal("1"), Decimal("2")),
            effective_from=moment,
            context=TEST_CONTEXT,
            now=utcnow(),
        )

    second = _second_while_first_is_open(app, put, put)
    assert isinstance(second, Conflict)
    with app.app_context():
        rows = db.session.scalar(
            select(func.count()).select_from(Price).where(Price.model == "gpt-rush")
        )
        assert rows == 1
        db.session.remove()
