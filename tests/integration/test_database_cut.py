"""The database drops out in the middle of a message: the request fails with 503, and once the
database is back its Idempotency-Key is freed within seconds, not after the takeover time, so
that the client's retry runs."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, clear_rate_limit_counters, start_conversation
from tests.integration.live_server import call, live_server, retry_until_run
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres_only, pytest.mark.real_clock]


def test_a_key_whose_request_lost_the_database_is_freed_once_it_is_back(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * 1_000_000)
    add_price(app, "openai", "gpt-cut", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-cut")
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"])
    env = {
        "DATABASE_URL": proxy.url,
        # The provider is held back while the database is cut: the call must outlast that.
        "PROVIDER_TIMEOUT_SECONDS": "30",
    }
    gate = threading.Event()
    fake_providers.script("openai", Answer(text="Held back.", gate=gate))
    path = f"/api/conversations/{conversation}/messages"
    body = json.dumps({"content": "Hello", "max_tokens": 20}).encode()
    key = {"Idempotency-Key": "cut-1"}
    try:
        with live_server(env, threads=4) as base, ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(call, "POST", f"{base}{path}", person.token, body, key)
            deadline = time.monotonic() + 20
            while not fake_providers.calls("openai"):
                assert time.monotonic() < deadline, "the provider was never called"
                time.sleep(0.02)
            proxy.cut()
            gate.set()
            status, _headers, answer = sending.result(timeout=60)
            assert status == 503, (status, answer)
            assert json.loads(answer)["error"]["code"] == "service_unavailable"
            time.sleep(1)
            proxy.restore()
            status, headers, answer = retry_until_run(
                "POST", f"{base}{path}", person.token, body, key, ran=201
            )
            assert status == 201, answer
            assert "Idempotent-Replayed" not in headers  # it ran; nothing was stored before
            assert json.loads(answer)["reply"]["content"].startswith("Fake reply")
    finally:
        proxy.close()


def test_a_cut_while_the_rate_limiter_loads_the_user_answers_503(
    app: Flask, person_factory: Any
) -> None:
    """The limiter loads the caller first: the database failing there is a 503 like anywhere
    else (not a 500), such requests spend nobody's budget (not the IP's either), and the
    limiter keeps counting in Redis (it is not Redis that failed)."""
    clear_rate_limit_counters(app)
    person = person_factory(credits=1_000_000)
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"])
    env = {
        "DATABASE_URL": proxy.url,
        "RATELIMIT_ENABLED": "true",
    }
    try:
        with live_server(env, threads=4) as base:
            assert call("GET", f"{base}/api/credit/balance", person.token)[0] == 200
            proxy.cut()
            statuses = [
                call("GET", f"{base}/api/credit/balance", person.token)[0] for _ in range(6)
            ]
            proxy.restore()
            assert set(statuses) == {503}, statuses
            deadline = time.monotonic() + 20
            while (status := call("GET", f"{base}/api/credit/balance", person.token)[0]) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.25)
            status, headers, _body = call("GET", f"{base}/api/me")  # counted against the IP
            assert (status, headers["X-RateLimit-Remaining"]) == (401, "99")
            status, _headers, body = call("GET", f"{base}/readyz")
            expected = "redis" if app.config["REDIS_URL"] else "memory"
            assert json.loads(body)["rate_limits"] == expected, body
    finally:
        proxy.close()
