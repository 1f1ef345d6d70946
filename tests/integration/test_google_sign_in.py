"""Google sign-in (`POST /api/auth/google`) against a local certificates server whose keys the
test generates: every check google-auth and we make, and who the person becomes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from creditapp.auth.google import GOOGLE_CERTS_TIMEOUT_SECONDS
from creditapp.auth.models import AuthSession, User
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Grant
from tests.conftest import utcnow
from tests.helpers import assert_error, scalar
from tests.integration.google_certs import CLIENT_ID, GoogleCertificates
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def google(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleCertificates]:
    certificates = GoogleCertificates()
    monkeypatch.setitem(app.config, "GOOGLE_CERTS_URL", certificates.url)
    monkeypatch.setitem(app.config, "GOOGLE_CLIENT_IDS", [CLIENT_ID, "creditapp-ios.example"])
    yield certificates
    certificates.close()


def _sign_in(client: FlaskClient, token: str) -> Any:
    return client.post("/api/auth/google", json={"id_token": token})


def test_a_first_sign_in_creates_the_user_with_the_tiers_first_grant(
    app: Flask, client: FlaskClient, google: GoogleCertificates
) -> None:
    first = _sign_in(client, google.id_token())
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert set(body) == {"access_token", "refresh_token", "user"}
    assert (body["user"]["email"], body["user"]["tier"]) == ("ada@example.com", "free")
    me = client.get("/api/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.get_json()["id"] == body["user"]["id"]
    subscription = select(func.count()).where(Grant.source == "subscription")
    assert scalar(app, subscription) == 1
    # A new user, not one a Google account was linked to.
    linked = select(func.count()).where(AuditRecord.action == "google_account_linked")
    assert scalar(app, linked) == 0
    # Signing in again is the same person, and grants nothing more; another client id works.
    again = _sign_in(client, google.id_token(aud="creditapp-ios.example")).get_json()
    assert again["user"]["id"] == body["user"]["id"]
    assert scalar(app, subscription) == 1
    assert scalar(app, select(func.count()).select_from(User)) == 1
    # The certificates were fetched once, then served from the cache.
    assert google.fetches == 1


@pytest.mark.parametrize(
    ("email", "hosted_domain"),
    [
        ("ada@gmail.com", None),
        ("ada@googlemail.com", None),
        ("ada@example.com", "example.com"),  # a Google Workspace domain: Google hosts the address
    ],
)
def test_an_address_google_is_authoritative_for_links_to_its_existing_user(
    app: Flask,
    client: FlaskClient,
    google: GoogleCertificates,
    person_factory: Any,
    email: str,
    hosted_domain: str | None,
) -> None:
    person = person_factory(email)
    answer = _sign_in(client, google.id_token(sub="4242", email=email, hd=hosted_domain))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["user"]["id"] == str(person.id)
    assert scalar(app, select(User.google_sub).where(User.id == person.id)) == "4242"
    linked = select(AuditRecord.account_id, AuditRecord.details).where(
        AuditRecord.action == "google_account_linked"
    )
    with app.app_context():
        assert db.session.execute(linked).all() == [
            (person.account_id, {"google_sub": "4242", "email": email})
        ]
        db.session.remove()


@pytest.mark.parametrize("hosted_domain", [None, "other.example"])
def test_an_address_google_only_verified_does_not_link_to_its_existing_user(
    app: Flask,
    client: FlaskClient,
    google: GoogleCertificates,
    person_factory: Any,
    hosted_domain: str | None,
) -> None:
    """Anyone may open a Google account on any address and have Google verify it: that proves
    the address today, not that its owner is the person who signed up with it."""
    person = person_factory("ada@example.com")
    answer = _sign_in(client, google.id_token(email="ada@example.com", hd=hosted_domain))
    error = assert_error(answer, 409, "account_exists")
    assert "sign in the way you signed up" in error["message"]
    assert scalar(app, select(User.google_sub).where(User.id == person.id)) is None
    assert scalar(app, select(func.count()).select_from(AuthSession)) == 1  # the person's own


def test_a_google_account_with_an_admins_email_does_not_sign_in_as_the_admin(
    app: Flask,
    client: FlaskClient,
    google: GoogleCertificates,
    capsys: pytest.CaptureFixture[str],
) -> None:
    created = app.test_cli_runner().invoke(
        args=["users", "create", "--email", "boss@gmail.com", "--admin"]
    )
    assert created.exit_code == 0, created.output
    admin_id = json.loads(created.stdout)["id"]
    refused_before = _refused("google_link_refused")
    capsys.readouterr()
    # Even where Google is authoritative for the address, an admin is never linked silently.
    token = google.id_token(email="boss@gmail.com")
    error = assert_error(_sign_in(client, token), 409, "account_exists")
    assert "admin" not in error["message"] and error["details"] == {}
    assert scalar(app, select(User.google_sub).where(User.id == int(admin_id))) is None
    assert scalar(app, select(func.count()).select_from(AuthSession)) == 0
    assert _refused("google_link_refused") == refused_before + 1
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "{" in line]
    events = [line for line in logged if line.get("reason") == "google_link_refused"]
    assert [(event["user_id"], event["refusal"]) for event in events] == [(admin_id, "admin")]
    assert token not in json.dumps(logged)


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"aud": "someone-else.apps.googleusercontent.com"}, "audience"),
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"exp": utcnow() - timedelta(minutes=5), "iat": utcnow() - timedelta(hours=1)}, "xpired"),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": None}, "not verified"),
        # Every claim we read is input like any other: the same rules as a request's text.
        ({"email": "ada\x00@example.com"}, "email"),
        ({"email": "ada@example.com\ud800"}, "email"),
        ({"email": "a" * 320 + "@example.com"}, "email"),
        ({"email": "not an address"}, "email"),
        ({"email": ["ada@example.com"]}, "email"),
        ({"sub": "1" * 256}, "subject"),
        ({"sub": "1\x00"}, "subject"),
        ({"sub": ""}, "subject"),
        ({"sub": 110169484474386276334}, "subject"),
        ({"hd": "example.com\x00"}, "hosted domain"),
        ({"hd": ["example.com"]}, "hosted domain"),
        ({"hd": "x" * 256}, "hosted domain"),
    ],
)
def test_a_token_failing_a_check_is_refused_saying_which(
    app: Flask,
    client: FlaskClient,
    google: GoogleCertificates,
    claims: dict[str, Any],
    says: str,
) -> None:
    refused_before = _refused("invalid_id_token")
    error = assert_error(_sign_in(client, google.id_token(**claims)), 401, "invalid_id_token")
    assert says in error["message"]
    # A security event: counted (and logged).
    assert _refused("invalid_id_token") == refused_before + 1
    assert scalar(app, select(func.count()).select_from(User)) == 0


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("creditapp_auth_failures_total", {"reason": reason}) or 0.0


def test_tokens_not_signed_by_a_served_key_are_refused(
    client: FlaskClient, google: GoogleCertificates
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (
        google.id_token(key=other_key),  # the right kid, the wrong key
        google.id_token(kid="unknown-kid"),
        "not-a-token",
        google.id_token()[:-10] + "AAAAAAAAAA",
    ):
        assert_error(_sign_in(client, token), 401, "invalid_id_token")


def test_an_unreachable_certificates_server_is_a_503(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = GoogleCertificates()
    token = down.id_token()
    monkeypatch.setitem(app.config, "GOOGLE_CERTS_URL", down.url)
    monkeypatch.setitem(app.config, "GOOGLE_CLIENT_IDS", [CLIENT_ID])
    down.close()
    assert_error(_sign_in(client, token), 503, "service_unavailable")


def test_a_certificates_server_that_hangs_is_a_503_within_seconds(
    app: Flask, client: FlaskClient, google: GoogleCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = google.id_token()
    proxy = TcpProxy("127.0.0.1", google.port)
    proxied = google.url.replace(f":{google.port}/", f":{proxy.port}/")
    monkeypatch.setitem(app.config, "GOOGLE_CERTS_URL", proxied)
    proxy.hang()
    try:
        started = time.monotonic()
        assert_error(_sign_in(client, token), 503, "service_unavailable")
        assert time.monotonic() - started < GOOGLE_CERTS_TIMEOUT_SECONDS + 5
    finally:
        proxy.close()


def test_two_first_sign_ins_at_once_make_one_user(app: Flask, google: GoogleCertificates) -> None:
    token = google.id_token(sub="4242", email="twice@example.com")

    def sign_in(_: int) -> Any:
        with app.test_client() as client:
            return _sign_in(client, token)

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(sign_in, range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4
    assert len({answer.get_json()["user"]["id"] for answer in answers}) == 1
    assert scalar(app, select(func.count()).select_from(User)) == 1
    assert scalar(app, select(func.count()).where(Grant.source == "subscription")) == 1
