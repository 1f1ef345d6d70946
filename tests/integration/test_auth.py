"""Access tokens: who may call what (contract section 4, Auth)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from creditapp.auth.models import User
from creditapp.auth.tokens import issue_access_token
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import Person, utcnow
from tests.helpers import assert_error


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_me_returns_the_caller(client: FlaskClient, person_factory) -> None:
    person: Person = person_factory("Me@Example.com")
    body = client.get("/api/me", headers=person.headers).get_json()
    assert body == {
        "id": str(person.id),
        "email": "me@example.com",
        "role": "user",
        "tier": "unfunded",
        "created_at": body["created_at"],
    }
    assert body["created_at"].endswith("Z")


def bad_tokens(app: Flask, person: Person) -> dict[str, str]:
    secret = app.config["JWT_SECRET_KEY"]
    claims = jwt.decode(person.token, secret, algorithms=["HS256"])
    return {
        "forged signature": jwt.encode(
            claims, "another-secret-of-sufficient-length-123", algorithm="HS256"
        ),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "expired": jwt.encode({**claims, "exp": claims["iat"] - 10}, secret, algorithm="HS256"),
        "unknown user": jwt.encode({**claims, "sub": "987654"}, secret, algorithm="HS256"),
        "non-numeric subject": jwt.encode({**claims, "sub": "admin"}, secret, algorithm="HS256"),
        "garbage": "not.a.token",
        "refresh token used as access": jwt.encode(
            {**claims, "type": "refresh"}, secret, algorithm="HS256"
        ),
    }


def test_missing_or_bad_tokens_get_401(app: Flask, client: FlaskClient, person_factory) -> None:
    person = person_factory()
    assert_error(client.get("/api/me"), 401, "unauthorized")
    assert_error(client.get("/api/me", headers={"Authorization": "Bearer"}), 401, "unauthorized")
    assert_error(
        client.get("/api/me", headers={"Authorization": f"Basic {person.token}"}),
        401,
        "unauthorized",
    )
    for name, token in bad_tokens(app, person).items():
        response = client.get("/api/credit/balance", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert_error(response, 401, "unauthorized")


def _signed(app: Flask, payload: str) -> str:
    """A token signed with our key whose payload is this JSON text as it stands, so that it may
    hold what no JSON encoder writes (1e999 reads as infinity)."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_encoded(payload.encode())}"
    key = app.config["JWT_SECRET_KEY"].encode()
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_encoded(signature)}"


def _encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sid", "1" + "0" * 30),
        ("sid", "-1"),
        ("sid", "1.0"),
        ("sid", '"1"'),
        ("sid", "true"),
        ("sid", "null"),
        ("sub", '"' + "1" * 19 + '"'),
        ("sub", '"1\\u0000"'),
        ("exp", "1e999"),
        ("exp", '"never"'),
        ("iat", "1e999"),
        ("iat", "-1e999"),
        ("nbf", "-1e999"),
        ("jti", '"\\u0000"'),
        ("jti", '"' + "a" * 65 + '"'),
        ("jti", "12345"),
        ("type", '["access"]'),
        ("jti", None),
        ("iat", None),
    ],
)
def test_a_signed_token_whose_claim_we_never_issue_gets_401(
    app: Flask, client: FlaskClient, person_factory: Any, claim: str, value: str | None
) -> None:
    """Each claim of a token is input like any other: a value of a form we never issue, or none
    (a crafted token signed with our key), is refused with 401, whatever reads it."""
    person = person_factory()
    claims = jwt.decode(person.token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    fields = [f"{json.dumps(name)}: {json.dumps(claims[name])}" for name in claims if name != claim]
    if value is not None:
        fields.append(f"{json.dumps(claim)}: {value}")
    token = _signed(app, "{" + ", ".join(fields) + "}")
    for path in ("/api/me", "/api/credit/balance"):
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert_error(response, 401, "unauthorized")


def test_admin_endpoints_need_the_admin_role(client: FlaskClient, person_factory, admin) -> None:
    user = person_factory()
    for method, path in (
        ("get", f"/api/admin/users/{user.id}/credit"),
        ("get", "/api/admin/credit/audit"),
        ("post", "/api/admin/credit/grant"),
        ("post", "/api/admin/credit/adjust"),
    ):
        response = getattr(client, method)(path, headers=user.headers, json={})
        assert_error(response, 403, "forbidden")
    assert (
        client.get(f"/api/admin/users/{user.id}/credit", headers=admin.headers).status_code == 200
    )


def test_the_role_comes_from_the_user_not_the_token(app: Flask, client: FlaskClient, admin) -> None:
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(update(User).where(User.id == admin.id).values(role="user"))
        # A token issued while the user was an admin still says "admin".
        with write_transaction(db.session):
            stale_token = issue_access_token(
                db.session,
                db.session.get(User, admin.id),
                now=utcnow(),
                expires_in=timedelta(minutes=5),
            )
        db.session.remove()
    claims = jwt.decode(stale_token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    assert claims["role"] == "user"
    response = client.get("/api/admin/credit/audit", headers=admin.headers)
    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("claim", ["role", "sub"])
def test_tokens_carry_subject_and_role(app: Flask, person_factory, claim: str) -> None:
    person = person_factory()
    claims = jwt.decode(person.token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    assert claims[claim] == {"role": "user", "sub": str(person.id)}[claim]
