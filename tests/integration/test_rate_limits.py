"""Rate limits (contract section 4) on a real server: Redis in production, memory embedded."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from tests.integration.live_server import call, live_server

pytestmark = pytest.mark.real_clock


def test_limits_per_user_with_headers_and_retry_after(app: Flask, person_factory, admin) -> None:
    user, other = person_factory(), person_factory()
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env) as base:
        statuses = [call("GET", f"{base}/api/me", user.token)[0] for _ in range(100)]
        assert statuses == [200] * 100
        status, headers, body = call("GET", f"{base}/api/me", user.token)
        assert status == 429
        assert json.loads(body)["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) > 0
        assert headers["X-RateLimit-Limit"] == "100" and headers["X-RateLimit-Remaining"] == "0"
        # Another user has a budget of their own.
        status, headers, _ = call("GET", f"{base}/api/me", other.token)
        assert status == 200 and headers["X-RateLimit-Remaining"] == "99"

        # Admin mutations are sensitive: 10 per 5 minutes.
        grant = json.dumps({"user_id": str(user.id), "amount": "1", "reason": "x"}).encode()
        results = [
            call("POST", f"{base}/api/admin/credit/grant", admin.token, grant)[0] for _ in range(11)
        ]
        assert results == [201] * 10 + [429]


def test_limits_fall_back_to_memory_when_redis_is_down(app: Flask, person_factory) -> None:
    user = person_factory()
    env = {
        "RATELIMIT_ENABLED": "true",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    with live_server(env) as base:
        status, headers, _ = call("GET", f"{base}/api/me", user.token)
        assert status == 200
        assert headers["X-RateLimit-Limit"] == "100"
        assert call("GET", f"{base}/readyz")[0] == 503
