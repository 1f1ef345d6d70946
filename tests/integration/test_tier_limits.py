"""A tier's own rate limits replace the service-wide ones for its users (Redis storage on the
PostgreSQL half, memory on the SQLite half); sign-in is limited per IP; forwarded headers are
believed only behind TRUSTED_PROXY_HOPS trusted proxies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp.auth import tiers
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.helpers import add_price, scalar, start_conversation
from tests.integration.live_server import call, live_server

pytestmark = pytest.mark.real_clock
CREDITS = 1_000 * 1_000_000


@pytest.fixture(autouse=True)
def fresh_limits(app: Flask) -> None:
    """Counters are kept per user id, and ids restart with every test."""
    if app.config["REDIS_URL"]:
        storage = redis.Redis.from_url(app.config["REDIS_URL"])
        keys = storage.keys("LIMITS*")
        if keys:
            storage.delete(*keys)


def _metered_tier(app: Flask) -> None:
    with app.app_context():
        with write_transaction(db.session):
            tiers.put(
                db.session,
                name="metered",
                monthly_credits=0,
                allowed_models=["*"],
                default_max_tokens=100,
                max_max_tokens=1000,
                rate_limits={"spending": "2 per minute"},
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()


def test_a_tiers_spending_limit_applies_to_its_users_only(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    _metered_tier(app)
    add_price(app, "openai", "gpt-tier", input="1", output="1")
    metered = person_factory(tier="metered", credits=CREDITS)
    other = person_factory(credits=CREDITS)
    conversations = {
        person.id: start_conversation(client, person, "openai", "gpt-tier")
        for person in (metered, other)
    }
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    body = json.dumps({"content": "Hello", "max_tokens": 5}).encode()

    def send_three(base: str, person: Person) -> list[tuple[int, dict[str, str], bytes]]:
        path = f"{base}/api/conversations/{conversations[person.id]}/messages"
        return [
            call("POST", path, person.token, body, {"Idempotency-Key": f"{person.id}-{n}"})
            for n in range(3)
        ]

    with live_server(env) as base:
        limited = send_three(base, metered)
        assert [status for status, _, _ in limited] == [201, 201, 429]
        _status, headers, answer = limited[-1]
        assert json.loads(answer)["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) > 0
        assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("2", "0")
        # Everyone else keeps the service-wide 30 a minute.
        assert [status for status, _, _ in send_three(base, other)] == [201, 201, 201]


def test_sign_in_attempts_are_limited_per_ip(app: Flask) -> None:
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    body = json.dumps({"id_token": "not-a-token"}).encode()
    with live_server(env) as base:
        statuses = [call("POST", f"{base}/api/auth/google", body=body)[0] for _ in range(11)]
    assert statuses == [401] * 10 + [429]


def _grant(admin: Person, **headers: str) -> dict[str, Any]:
    return {
        "body": json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "from"}).encode(),
        "headers": {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", **headers},
    }


def test_forwarded_headers_are_ignored_without_trusted_proxies(app: Flask, admin: Person) -> None:
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}) as base:
        status, _headers, _ = call(
            "POST", f"{base}/api/admin/credit/grant", admin.token, **_grant(admin)
        )
    assert status == 201
    assert (
        scalar(app, select(AuditRecord.client_ip).where(AuditRecord.action == "grant"))
        == "127.0.0.1"
    )


def test_one_trusted_proxy_gives_the_clients_address_and_scheme(app: Flask, admin: Person) -> None:
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "TRUSTED_PROXY_HOPS": "1"}
    with live_server(env) as base:
        status, headers, _ = call(
            "POST", f"{base}/api/admin/credit/grant", admin.token, **_grant(admin)
        )
    assert status == 201
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert (
        scalar(app, select(AuditRecord.client_ip).where(AuditRecord.action == "grant"))
        == "203.0.113.9"
    )
