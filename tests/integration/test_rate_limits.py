"""Rate limits (contract section 4) on a real server: Redis in production, memory embedded."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask

from tests.helpers import add_price, clear_rate_limit_counters, start_conversation
from tests.integration.gateway_client import make_key
from tests.integration.live_server import call, live_server
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.real_clock


@pytest.fixture(autouse=True)
def fresh_limits(app: Flask) -> None:
    clear_rate_limit_counters(app)


def test_pages_and_their_assets_spend_no_budget(app: Flask) -> None:
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env) as base:
        for path in ["/", "/admin", "/web/static/common.js"] * 40:
            assert call("GET", f"{base}{path}")[0] == 200
        status, headers, _body = call("GET", f"{base}/api/me")
        assert status == 401 and headers["X-RateLimit-Remaining"] == "99"


def test_limits_per_user_with_headers_and_retry_after(app: Flask, person_factory, admin) -> None:
    user, other = person_factory(), person_factory()
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env) as base:
        # One budget across every endpoint, not 100 on each.
        paths = ["/api/me", "/api/credit/balance", "/api/characters", "/api/conversations"]
        answers = [call("GET", f"{base}{paths[n % 4]}", user.token) for n in range(100)]
        assert [status for status, _headers, _body in answers] == [200] * 100
        # Only a refusal says when to come back.
        assert all("Retry-After" not in headers for _status, headers, _body in answers)
        status, headers, body = call("GET", f"{base}/api/credit/grants", user.token)
        assert status == 429
        assert json.loads(body)["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) > 0
        assert headers["X-RateLimit-Limit"] == "100" and headers["X-RateLimit-Remaining"] == "0"
        # Another user has a budget of their own.
        status, headers, _ = call("GET", f"{base}/api/me", other.token)
        assert status == 200 and headers["X-RateLimit-Remaining"] == "99"

        ready = json.loads(call("GET", f"{base}/readyz")[2])
        assert ready["rate_limits"] == ("redis" if app.config["REDIS_URL"] else "memory")

        # Admin mutations are sensitive: 10 per 5 minutes, one budget across them all.
        grant = json.dumps({"user_id": str(user.id), "amount": "1", "reason": "x"}).encode()
        results = [
            call("POST", f"{base}/api/admin/credit/grant", admin.token, grant) for _ in range(10)
        ]
        adjust = json.dumps({"user_id": str(user.id), "amount": "-1", "reason": "x"}).encode()
        results.append(call("POST", f"{base}/api/admin/credit/adjust", admin.token, adjust))
        assert [status for status, _headers, _body in results] == [201] * 10 + [429]
        assert ["Retry-After" in headers for _status, headers, _body in results] == [False] * 10 + [
            True
        ]


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
        status, _headers, body = call("GET", f"{base}/readyz")
        assert status == 503
        # Each process counts on its own until Redis is back: /readyz says so.
        assert json.loads(body)["error"]["details"]["rate_limits"] == "memory_fallback"


def test_spending_is_limited_to_30_a_minute(app: Flask, client, person_factory) -> None:  # type: ignore[no-untyped-def]
    user = person_factory(credits=1_000 * 1_000_000)
    add_price(app, "openai", "gpt-limits", input="1", output="1")
    conversation = start_conversation(client, user, "openai", "gpt-limits")
    key = make_key(client, user)[1]
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    body = b'{"content": "Hello", "max_tokens": 5}'
    path = f"/api/conversations/{conversation}/messages"
    with live_server(env) as base:
        statuses = [
            call("POST", f"{base}{path}", user.token, body, headers={"Idempotency-Key": f"k{n}"})[0]
            for n in range(31)
        ]
        assert statuses == [201] * 30 + [429]
        # One budget across the doors that spend: the gateway's calls count with the messages.
        completion = json.dumps(
            {"model": "openai/gpt-limits", "messages": [{"role": "user", "content": "Hi"}]}
        ).encode()
        status, _headers, answer = call("POST", f"{base}/v1/chat/completions", key, completion)
        assert status == 429, answer
        # Spending is limited apart: reading the balance still works.
        assert call("GET", f"{base}/api/credit/balance", user.token)[0] == 200


def test_without_a_token_requests_are_limited_by_client_ip(app: Flask) -> None:
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env) as base:
        statuses = [call("GET", f"{base}/api/me")[0] for _ in range(101)]
        assert statuses == [401] * 100 + [429]
        # A forged X-Forwarded-For does not buy a new budget: no proxy is trusted here.
        status, _headers, _body = call(
            "GET", f"{base}/api/me", headers={"X-Forwarded-For": "10.1.2.3"}
        )
        assert status == 429


@pytest.mark.postgres_only  # the half with Redis
def test_redis_coming_and_going_under_load_never_answers_500(app: Flask, person_factory) -> None:
    """Redis cut and back every tenth of a second while requests run: the limiter switches
    between Redis and memory under them, and a request that meets Redis gone after its limit
    was checked leaves the headers out of its answer (found by the chaos run: it answered 500)."""
    person = person_factory(credits=1_000_000)
    proxy = TcpProxy.in_front_of(app.config["REDIS_URL"])
    env = {
        "RATELIMIT_ENABLED": "true",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": proxy.url,
    }
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(0.1):
            proxy.cut()
            time.sleep(0.1)
            proxy.restore()

    def read_balances(_index: int) -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(call("GET", f"{base}/api/credit/balance", person.token)[0])
        return statuses

    try:
        with live_server(env, threads=8) as base, ThreadPoolExecutor(max_workers=9) as pool:
            flapping = pool.submit(flap)
            reading = [pool.submit(read_balances, index) for index in range(8)]
            time.sleep(5)
            stop.set()
            flapping.result()
            statuses = Counter(status for future in reading for status in future.result())
    finally:
        proxy.close()
    assert set(statuses) <= {200, 429}, statuses


@pytest.mark.postgres_only  # the half with Redis
def test_an_options_request_leaves_the_limits_counted_in_redis(app: Flask) -> None:
    """flask-jwt-extended verifies nothing for OPTIONS: the caller was then read as if
    verified, which raised inside the limiter, and the limiter took that for Redis failing and
    went on counting in each process's memory."""
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env, threads=1) as base:
        for path in ("/api/me", "/api/credit/balance", "/v1/models"):
            assert call("OPTIONS", f"{base}{path}")[0] == 200
        ready = json.loads(call("GET", f"{base}/readyz")[2])
        assert ready["rate_limits"] == "redis"


def test_only_a_rate_limit_refusal_says_when_to_come_back(app: Flask, person_factory) -> None:  # type: ignore[no-untyped-def]
    """The limiter's window reset is no hint for a dependency that failed: a 503 has no
    Retry-After."""
    user = person_factory()
    env = {
        "RATELIMIT_ENABLED": "true",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "STRIPE_SECRET_KEY": "",
    }
    with live_server(env) as base:
        body = json.dumps({"credits": "100"}).encode()
        status, headers, answer = call(
            "POST", f"{base}/api/credit/purchases", user.token, body, {"Idempotency-Key": "b1"}
        )
        assert status == 503, answer
        assert json.loads(answer)["error"]["code"] == "purchases_unavailable"
        assert "Retry-After" not in headers and "X-RateLimit-Remaining" in headers


def test_admin_mutations_refused_for_their_token_spend_no_sign_in_of_the_address(
    app: Flask,
) -> None:
    """An admin's page retrying with an expired token: its refusals count per IP, in the
    admin mutations' budget, and the address can still sign in."""
    env = {"RATELIMIT_ENABLED": "true", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    grant = json.dumps({"user_id": "1", "amount": "1", "reason": "x"}).encode()
    sign_in = json.dumps({"id_token": "not-a-token"}).encode()
    with live_server(env) as base:
        refused = [
            call("POST", f"{base}/api/admin/credit/grant", "expired", grant)[0] for _ in range(11)
        ]
        assert refused == [401] * 10 + [429]
        status, _headers, answer = call("POST", f"{base}/api/auth/google", None, sign_in)
        assert (status, json.loads(answer)["error"]["code"]) == (401, "invalid_id_token")
