"""Contract section 4: request ids, security headers, and the one error shape for every failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from tests.conftest import Person
from tests.helpers import assert_error
from tests.integration.gateway_client import make_key
from tests.integration.live_server import call, live_server


@pytest.fixture
def user(person_factory) -> Person:  # type: ignore[no-untyped-def]
    return person_factory()


def test_a_sane_request_id_is_echoed_and_an_insane_one_replaced(client: FlaskClient, user) -> None:
    sane = client.get("/api/me", headers={**user.headers, "X-Request-ID": "abc.DEF_1-2"})
    assert sane.headers["X-Request-ID"] == "abc.DEF_1-2"
    for insane in ("has space", "x" * 129, "semi;colon", ""):
        response = client.get("/api/me", headers={**user.headers, "X-Request-ID": insane})
        assert response.headers["X-Request-ID"] != insane
        assert len(response.headers["X-Request-ID"]) == 32


def test_security_headers_are_on_every_response(client: FlaskClient, user) -> None:
    for response in (
        client.get("/api/me", headers=user.headers),
        client.get("/nope"),
        client.get("/healthz"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src" in response.headers["Content-Security-Policy"]
        assert "Strict-Transport-Security" not in response.headers
    assert client.get("/api/me", headers=user.headers).headers["Cache-Control"] == "no-store"
    secure = client.get("/api/me", headers=user.headers, base_url="https://localhost")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


def test_unknown_route_and_wrong_method(client: FlaskClient, user) -> None:
    assert_error(client.get("/api/nothing-here", headers=user.headers), 404, "not_found")
    response = client.delete("/api/credit/balance", headers=user.headers)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_bodies_over_64_kib_are_refused(client: FlaskClient, admin) -> None:
    body = '{"reason": "' + "x" * (64 * 1024) + '"}'
    response = client.post(
        "/api/admin/credit/grant", headers=admin.headers, data=body, content_type="application/json"
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_bodies_are_refused(client: FlaskClient, admin, content_type: str) -> None:
    response = client.post(
        "/api/admin/credit/grant", headers=admin.headers, data="a=1", content_type=content_type
    )
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", ["{", '{"amount": NaN}', '{"amount": Infinity}', "[1,", "\xff"])
def test_malformed_json_is_refused(client: FlaskClient, admin, body: str) -> None:
    response = client.post(
        "/api/admin/credit/grant", headers=admin.headers, data=body, content_type="application/json"
    )
    assert_error(response, 400, "malformed_json")


def test_an_unexpected_error_is_a_500_without_internals(app: Flask) -> None:
    with app.test_request_context("/api/me"):
        app.preprocess_request()
        response = app.make_response(
            app.handle_user_exception(RuntimeError("secret internals at /srv/x.py"))
        )
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"]["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)


def test_health_and_readiness(client: FlaskClient, app: Flask) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    expected = {"database": "ok"} | ({"redis": "ok"} if app.config["REDIS_URL"] else {})
    # Where rate limits are counted: in Redis when there is one, else in each process's memory.
    counted = "redis" if app.config["REDIS_URL"] else "memory"
    counted = counted if app.config["RATELIMIT_ENABLED"] else "off"
    assert ready == {"status": "ready", "checks": expected, "rate_limits": counted}


def test_log_lines_carry_the_request_id(client: FlaskClient, user, capfd) -> None:
    import json

    capfd.readouterr()
    response = client.get("/api/me", headers={**user.headers, "X-Request-ID": "trace-me-1"})
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    access = [line for line in lines if line.get("event") == "request"]
    assert response.headers["X-Request-ID"] == "trace-me-1"
    assert access and all(line["request_id"] == "trace-me-1" for line in access)
    assert access[-1]["status"] == 200 and access[-1]["path"] == "/api/me"


# Forwarded addresses a client can send straight to gunicorn, and what the audit records: a
# valid address in its canonical form, else the connecting one (the column holds 64).
FORWARDED = [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("a" * 100, "127.0.0.1"),
    ("10.0.0.1, " * 10 + "b" * 100, "127.0.0.1"),
    ("fe80::1%" + "c" * 80, "127.0.0.1"),
    ("203.0.113.7:8080", "127.0.0.1"),
    ("\u0663.0.0.1", "127.0.0.1"),
    ("", "127.0.0.1"),
]


@pytest.mark.real_clock
def test_a_forwarded_address_is_recorded_only_when_it_is_one(app: Flask, admin: Person) -> None:
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "TRUSTED_PROXY_HOPS": "1"}
    body = json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "from"}).encode()
    with live_server(env) as base:

        def grant(forwarded: str) -> tuple[int, dict[str, Any]]:
            # The raw bytes a client may send: HTTP/1.1 headers travel as latin-1.
            headers = {"X-Forwarded-For": forwarded.encode().decode("latin-1")}
            status, _headers, answer = call(
                "POST", f"{base}/api/admin/credit/grant", admin.token, body, headers=headers
            )
            return status, json.loads(answer)

        answers = [grant(forwarded) for forwarded, _recorded in FORWARDED]
        # gunicorn itself refuses a NUL in a header, in the contract's shape.
        nul_status, nul_answer = grant("203.0.113.7\x00")
    assert [status for status, _answer in answers] == [201] * len(FORWARDED)
    assert (nul_status, nul_answer["error"]["code"]) == (400, "bad_request")
    recorded = select(AuditRecord.client_ip).where(AuditRecord.action == "grant")
    with app.app_context():
        assert db.session.scalars(recorded.order_by(AuditRecord.id)).all() == [
            address for _forwarded, address in FORWARDED
        ]
        db.session.remove()


@pytest.mark.real_clock
@pytest.mark.parametrize(
    ("proxies", "recorded"),
    [("127.0.0.1,::1", "203.0.113.7"), ("192.0.2.0/24", "127.0.0.1")],
)
def test_forwarded_headers_are_believed_only_from_a_trusted_proxys_address(
    app: Flask, admin: Person, proxies: str, recorded: str
) -> None:
    """A client that reaches gunicorn itself (a port opened for Prometheus) is not a proxy: what
    it writes in X-Forwarded-For would be any address it likes to the per-IP limits."""
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "TRUSTED_PROXY_HOPS": "1",
        "TRUSTED_PROXY_ADDRESSES": proxies,
    }
    body = json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "from"}).encode()
    with live_server(env) as base:
        status, _headers, answer = call(
            "POST",
            f"{base}/api/admin/credit/grant",
            admin.token,
            body,
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
    assert status == 201, answer
    with app.app_context():
        assert db.session.scalars(select(AuditRecord.client_ip)).all() == [recorded]
        db.session.remove()


@pytest.mark.parametrize("connected", ["203.0.113.7\x00", "d" * 100, "/run/gunicorn.sock", ""])
def test_a_connecting_address_that_is_not_one_is_not_recorded(
    app: Flask, client: FlaskClient, admin: Person, connected: str
) -> None:
    response = client.post(
        "/api/admin/credit/grant",
        json={"user_id": str(admin.id), "amount": "1", "reason": "x"},
        headers=admin.headers,
        environ_overrides={"REMOTE_ADDR": connected},
    )
    assert response.status_code == 201, response.get_json()
    recorded = select(AuditRecord.client_ip).where(AuditRecord.action == "grant")
    with app.app_context():
        assert db.session.scalars(recorded).all() == [None]
        db.session.remove()


@pytest.mark.parametrize(
    ("path", "named"),
    [
        # An operation without query arguments: a team's balance asked of it is no silent
        # answer of the caller's own.
        ("/api/credit/balance?team_id=1", "team_id"),
        ("/api/me?fields=all", "fields"),
        # One value each: readers disagree on which of two counts.
        ("/api/credit/transactions?limit=1&limit=2", "limit"),
        ("/api/credit/transactions?format=csv&format=json", "format"),
    ],
)
def test_a_query_parameter_is_given_once_and_only_where_it_is_taken(
    client: FlaskClient, user: Person, path: str, named: str
) -> None:
    error = assert_error(client.get(path, headers=user.headers), 400, "validation_error")
    assert list(error["details"]) == [named]


def test_the_gateway_names_an_unknown_query_parameter_as_openai_does(
    client: FlaskClient, user: Person
) -> None:
    key = make_key(client, user)[1]
    refused = client.get("/v1/models?limit=5", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["param"] == "limit"


def test_a_page_takes_any_query(client: FlaskClient) -> None:
    assert client.get("/api/docs?utm_source=readme").status_code == 200
