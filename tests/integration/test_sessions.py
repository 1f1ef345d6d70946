"""Sessions: refresh with rotation and reuse detection, logout, logout-all, admin revocation,
the demo sign-in; a revoked token refused by every gunicorn worker at once, and after Redis is
flushed (the database is the record)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import jwt
import pytest
import redis
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.auth.models import AuthSession
from creditapp.extensions import db
from creditapp.ledger.models import Account, AuditRecord
from tests.conftest import Person, utcnow
from tests.helpers import assert_error, audited, scalar
from tests.integration.live_server import call, live_server


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _me(client: FlaskClient, token: str) -> Any:
    return client.get("/api/me", headers=_bearer(token))


def _refresh(client: FlaskClient, token: str) -> Any:
    return client.post("/api/auth/refresh", headers=_bearer(token))


def _session_of(app: Flask, tokens: dict[str, str]) -> Any:
    claims = jwt.decode(tokens["refresh_token"], options={"verify_signature": False})
    return scalar(app, select(AuthSession).where(AuthSession.id == claims["sid"]))


def _demo_sign_in(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(app.config, "DEMO_MODE", True)
    assert app.test_cli_runner().invoke(args=["demo", "seed"]).exit_code == 0
    answer = client.post("/api/auth/demo")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_the_demo_sign_in_exists_only_in_demo_mode(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "DEMO_MODE", False)
    assert_error(client.post("/api/auth/demo"), 404, "not_found")
    signed_in = _demo_sign_in(app, client, monkeypatch)
    assert signed_in["user"]["email"] == "user@demo.creditapp"
    me = _me(client, signed_in["access_token"])
    assert me.get_json()["email"] == "user@demo.creditapp"
    as_admin = client.post("/api/auth/demo", json={"role": "admin"}).get_json()
    assert (as_admin["user"]["email"], as_admin["user"]["role"]) == (
        "admin@demo.creditapp",
        "admin",
    )
    assert_error(client.post("/api/auth/demo", json={"role": "root"}), 400, "validation_error")


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_session(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _demo_sign_in(app, client, monkeypatch)
    second = _refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.get_json()
    rotated = second.get_json()
    assert set(rotated) == {"access_token", "refresh_token"}
    assert _me(client, rotated["access_token"]).status_code == 200
    # The spent refresh token presented again after the reuse grace: a stolen copy. The whole
    # session goes.
    grace = timedelta(seconds=app.config["REFRESH_REUSE_GRACE_SECONDS"])
    with time_machine.travel(utcnow() + grace + timedelta(seconds=2), tick=False):
        assert_error(_refresh(client, first["refresh_token"]), 401, "token_revoked")
        for token in (rotated["access_token"], first["access_token"]):
            assert_error(_me(client, token), 401, "token_revoked")
        assert_error(_refresh(client, rotated["refresh_token"]), 401, "token_revoked")
    # The service revoked it, not its user: audited so, with why.
    assert audited(app, "sessions_revoked") == [
        (
            "sessions_revoked",
            "system",
            "sign-in",
            {"revoked_sessions": 1, "reason": "refresh_reused"},
        )
    ]


def test_two_tabs_refreshing_with_the_same_token_at_once_both_get_the_same_new_pair(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in = _demo_sign_in(app, client, monkeypatch)
    both_ready = threading.Barrier(2)

    def refresh_in_a_tab(_: int) -> Any:
        with app.test_client() as tab:
            both_ready.wait()
            return _refresh(tab, signed_in["refresh_token"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(refresh_in_a_tab, range(2)))
    assert [answer.status_code for answer in answers] == [200, 200], [
        answer.get_json() for answer in answers
    ]
    pair = answers[0].get_json()
    assert answers[1].get_json() == pair
    assert _me(client, pair["access_token"]).status_code == 200
    assert _session_of(app, pair).revoked_at is None
    # The new refresh token is the session's one usable token.
    assert _refresh(client, pair["refresh_token"]).status_code == 200


def test_a_just_rotated_refresh_token_gets_the_same_pair_within_the_grace_and_revokes_after(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = app.config["REFRESH_REUSE_GRACE_SECONDS"]
    assert grace == 10
    signed_in = _demo_sign_in(app, client, monkeypatch)
    rotated_at = utcnow()
    pair = _refresh(client, signed_in["refresh_token"]).get_json()
    with time_machine.travel(rotated_at + timedelta(seconds=grace - 1), tick=False):
        again = _refresh(client, signed_in["refresh_token"])
    assert (again.status_code, again.get_json()) == (200, pair)
    with time_machine.travel(rotated_at + timedelta(seconds=grace + 2), tick=False):
        assert_error(_refresh(client, signed_in["refresh_token"]), 401, "token_revoked")
        # Past the grace it is a stolen copy, as before: the whole family goes.
        assert_error(_me(client, pair["access_token"]), 401, "token_revoked")
        assert_error(_refresh(client, pair["refresh_token"]), 401, "token_revoked")
    assert _session_of(app, pair).revoked_reason == "refresh_reused"


def test_a_token_rotated_away_twice_revokes_the_session_even_within_the_grace(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in = _demo_sign_in(app, client, monkeypatch)
    second = _refresh(client, signed_in["refresh_token"]).get_json()
    third = _refresh(client, second["refresh_token"]).get_json()
    assert_error(_refresh(client, signed_in["refresh_token"]), 401, "token_revoked")
    assert_error(_me(client, third["access_token"]), 401, "token_revoked")


def test_without_a_grace_a_rotated_token_presented_again_at_once_revokes_the_session(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "REFRESH_REUSE_GRACE_SECONDS", 0)
    signed_in = _demo_sign_in(app, client, monkeypatch)
    pair = _refresh(client, signed_in["refresh_token"]).get_json()
    assert_error(_refresh(client, signed_in["refresh_token"]), 401, "token_revoked")
    assert_error(_me(client, pair["access_token"]), 401, "token_revoked")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sid", 10**30),
        ("sid", "1"),
        ("jti", "\x00"),
        ("jti", "a" * 65),
        ("jti", 10**30),
        ("jti", None),
    ],
)
def test_a_signed_refresh_token_whose_claim_we_never_issue_gets_401_and_revokes_nothing(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, claim: str, value: Any
) -> None:
    signed_in = _demo_sign_in(app, client, monkeypatch)
    secret = app.config["JWT_SECRET_KEY"]
    claims = jwt.decode(signed_in["refresh_token"], secret, algorithms=["HS256"])
    claims.pop(claim)
    crafted = jwt.encode(
        claims if value is None else {**claims, claim: value}, secret, algorithm="HS256"
    )
    assert_error(_refresh(client, crafted), 401, "unauthorized")
    assert _me(client, signed_in["access_token"]).status_code == 200
    assert _refresh(client, signed_in["refresh_token"]).status_code == 200


def test_each_kind_of_token_works_only_where_it_belongs(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in = _demo_sign_in(app, client, monkeypatch)
    assert_error(_me(client, signed_in["refresh_token"]), 401, "unauthorized")
    assert_error(
        _refresh(client, signed_in["access_token"]),
        401,
        "unauthorized",
    )
    claims = jwt.decode(signed_in["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 15 * 60  # JWT_ACCESS_MINUTES
    refresh = jwt.decode(signed_in["refresh_token"], options={"verify_signature": False})
    assert refresh["exp"] - refresh["iat"] == 30 * 24 * 3600  # JWT_REFRESH_DAYS


def test_logout_ends_one_session_and_logout_all_every_one(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop, phone, tablet = (_demo_sign_in(app, client, monkeypatch) for _ in range(3))
    assert (
        client.post("/api/auth/logout", headers=_bearer(laptop["access_token"])).status_code == 204
    )
    assert_error(_me(client, laptop["access_token"]), 401, "token_revoked")
    assert_error(
        _refresh(client, laptop["refresh_token"]),
        401,
        "token_revoked",
    )
    assert _me(client, phone["access_token"]).status_code == 200
    everywhere = client.post("/api/auth/logout-all", headers=_bearer(phone["access_token"]))
    assert everywhere.status_code == 204
    for device in (phone, tablet):
        assert_error(_me(client, device["access_token"]), 401, "token_revoked")
    user_id = laptop["user"]["id"]
    # Every live one: the phone's, the tablet's, and those the demo seeds made.
    everywhere_count = scalar(
        app, select(func.count()).where(AuthSession.revoked_reason == "logout_all")
    )
    assert everywhere_count >= 2
    assert audited(app, "sessions_revoked") == [
        ("sessions_revoked", "user", user_id, {"revoked_sessions": 1, "reason": "logout"}),
        (
            "sessions_revoked",
            "user",
            user_id,
            {"revoked_sessions": everywhere_count, "reason": "logout_all"},
        ),
    ]
    # On the user's account: found by the audit log's user filter.
    personal = scalar(app, select(Account.id).where(Account.user_id == int(user_id)))
    with app.app_context():
        on = db.session.scalars(
            select(AuditRecord.account_id).where(AuditRecord.action == "sessions_revoked")
        ).all()
        db.session.remove()
    assert on == [personal, personal]


def test_an_admin_revokes_a_users_sessions(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    user = person_factory()
    revoked = client.post(f"/api/admin/users/{user.id}/revoke-sessions", headers=admin.headers)
    assert revoked.get_json() == {"user_id": str(user.id), "revoked_sessions": 1}
    assert_error(client.get("/api/me", headers=user.headers), 401, "token_revoked")
    assert audited(app, "sessions_revoked") == [
        ("sessions_revoked", "admin", str(admin.id), {"revoked_sessions": 1, "reason": "admin"})
    ]
    assert_error(
        client.post(f"/api/admin/users/{user.id}/revoke-sessions", headers=user.headers),
        401,
        "token_revoked",
    )


def test_the_cli_revokes_every_session_of_a_user(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    user = person_factory()
    ran = app.test_cli_runner().invoke(args=["users", "revoke", "--email", user.email])
    assert json.loads(ran.stdout) == {"email": user.email, "revoked_sessions": 1}
    assert_error(client.get("/api/me", headers=user.headers), 401, "token_revoked")


@pytest.mark.real_clock
def test_every_worker_refuses_a_revoked_token_at_once_even_after_a_redis_flush(
    app: Flask, person_factory: Any
) -> None:
    user = person_factory()
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    with live_server(env, workers=3, threads=2) as base:
        assert all(call("GET", f"{base}/api/me", user.token)[0] == 200 for _ in range(12))
        assert call("POST", f"{base}/api/auth/logout", user.token)[0] == 204
        revoked_at = time.monotonic()
        answers = [call("GET", f"{base}/api/me", user.token)]
        assert time.monotonic() - revoked_at < 1
        # Every worker (requests spread over three processes) refuses it from the first.
        answers += [call("GET", f"{base}/api/me", user.token) for _ in range(30)]
        assert all(status == 401 for status, _, _ in answers)
        assert {json.loads(body)["error"]["code"] for _, _, body in answers} == {"token_revoked"}
        if app.config["REDIS_URL"]:
            redis.Redis.from_url(app.config["REDIS_URL"]).flushdb()
            status, _, body = call("GET", f"{base}/api/me", user.token)
            assert (status, json.loads(body)["error"]["code"]) == (401, "token_revoked")
