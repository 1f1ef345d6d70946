"""Rotating JWT_SECRET_KEY signs no one out: restarted with the new key and the old one as
JWT_PREVIOUS_SECRET_KEY, the service accepts the tokens the old key signed (a refresh gets a pair
signed with the new key); restarted without the old key, it refuses them (docs/deploy.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
from flask import Flask

from creditapp import create_app
from creditapp.auth.models import User
from creditapp.auth.tokens import Tokens, key_id, sign_in
from creditapp.config import load_config
from creditapp.database import write_transaction
from creditapp.errors import ConfigurationError
from creditapp.extensions import db
from tests.conftest import utcnow
from tests.helpers import assert_error

NEW_KEY = "the-signing-key-after-the-rotation-0123456789"
STRANGE_KEY = "a-key-the-service-never-had-0123456789-abcdef"


def _signed_in(app: Flask, user_id: int) -> Tokens:
    """A sign-in's access and refresh tokens, issued by `app` (signed with its key)."""
    with app.app_context():
        with write_transaction(db.session):
            user = db.session.get(User, user_id)
            assert user is not None
            tokens = sign_in(db.session, user=user, now=utcnow())
        db.session.remove()
    return tokens


@contextmanager
def _restarted(
    monkeypatch: pytest.MonkeyPatch, *, key: str, previous: str | None
) -> Iterator[Flask]:
    """The service started again with these keys in its environment."""
    with monkeypatch.context() as env:
        env.setenv("JWT_SECRET_KEY", key)
        if previous is None:
            env.delenv("JWT_PREVIOUS_SECRET_KEY", raising=False)
        else:
            env.setenv("JWT_PREVIOUS_SECRET_KEY", previous)
        restarted = create_app()
    try:
        yield restarted
    finally:
        with restarted.app_context():
            db.engine.dispose()


def _me(app: Flask, token: str) -> Any:
    return app.test_client().get("/api/me", headers={"Authorization": f"Bearer {token}"})


def _refresh(app: Flask, token: str) -> Any:
    return app.test_client().post("/api/auth/refresh", headers={"Authorization": f"Bearer {token}"})


def test_tokens_of_the_previous_key_are_accepted_until_it_is_removed(
    app: Flask, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key = app.config["JWT_SECRET_KEY"]
    person = person_factory()
    before = _signed_in(app, person.id)
    assert jwt.get_unverified_header(before.access_token)["kid"] == key_id(old_key)
    old_claims = jwt.decode(before.access_token, old_key, algorithms=["HS256"])
    # Naming the old key does not make another key's signature good.
    forged = jwt.encode(
        old_claims, STRANGE_KEY, algorithm="HS256", headers={"kid": key_id(old_key)}
    )

    with _restarted(monkeypatch, key=NEW_KEY, previous=old_key) as rotated:
        answer = _me(rotated, before.access_token)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["id"] == str(person.id)
        assert_error(_me(rotated, forged), 401, "unauthorized")
        refreshed = _refresh(rotated, before.refresh_token)
        assert refreshed.status_code == 200, refreshed.get_json()
        after = refreshed.get_json()
        # New tokens are signed with the new key only, and say so.
        for token in (after["access_token"], after["refresh_token"]):
            assert jwt.get_unverified_header(token)["kid"] == key_id(NEW_KEY)
            jwt.decode(token, NEW_KEY, algorithms=["HS256"])
            with pytest.raises(jwt.InvalidSignatureError):
                jwt.decode(token, old_key, algorithms=["HS256"])
        assert _me(rotated, after["access_token"]).status_code == 200
        # A sign-in on the rotated service is signed with the new key.
        fresh = _signed_in(rotated, person.id)
        jwt.decode(fresh.access_token, NEW_KEY, algorithms=["HS256"])

    with _restarted(monkeypatch, key=NEW_KEY, previous=None) as settled:
        assert_error(_me(settled, before.access_token), 401, "unauthorized")
        assert_error(_refresh(settled, before.refresh_token), 401, "unauthorized")
        assert _me(settled, after["access_token"]).status_code == 200
        assert _me(settled, fresh.access_token).status_code == 200
        assert _refresh(settled, after["refresh_token"]).status_code == 200


def test_a_new_key_can_be_accepted_on_every_machine_before_any_signs_with_it(
    app: Flask, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several web machines: each first accepts the new key as JWT_PREVIOUS_SECRET_KEY while it
    still signs with the old one, so that during the second restart, when some sign with the
    new key and some with the old, every machine takes both (docs/deploy.md)."""
    old_key = app.config["JWT_SECRET_KEY"]
    person = person_factory()
    before = _signed_in(app, person.id)
    with (
        _restarted(monkeypatch, key=old_key, previous=NEW_KEY) as still_old,
        _restarted(monkeypatch, key=NEW_KEY, previous=old_key) as already_new,
    ):
        fresh = _signed_in(already_new, person.id)
        for machine in (still_old, already_new):
            for token in (before.access_token, fresh.access_token):
                assert _me(machine, token).status_code == 200
        # A token of the old key refreshed on a machine already signing with the new key, and
        # the new pair used on one that does not sign with it yet.
        refreshed = _refresh(already_new, before.refresh_token).get_json()
        assert _me(still_old, refreshed["access_token"]).status_code == 200
        assert _refresh(still_old, refreshed["refresh_token"]).status_code == 200


def test_without_a_previous_key_only_the_current_key_is_accepted(
    app: Flask, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key change without JWT_PREVIOUS_SECRET_KEY signs everyone out, as before."""
    person = person_factory()
    before = _signed_in(app, person.id)
    with _restarted(monkeypatch, key=NEW_KEY, previous=None) as changed:
        assert_error(_me(changed, before.access_token), 401, "unauthorized")
        assert_error(_refresh(changed, before.refresh_token), 401, "unauthorized")


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ("short-old-key", "JWT_PREVIOUS_SECRET_KEY must be at least 32 characters"),
        (NEW_KEY, "JWT_PREVIOUS_SECRET_KEY is JWT_SECRET_KEY itself"),
    ],
)
def test_production_refuses_a_weak_or_unchanged_previous_key(
    monkeypatch: pytest.MonkeyPatch, previous: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://creditapp@db/creditapp")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("METRICS_TOKEN", "a-scrapers-token-of-enough-length-0123")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://app.example")
    monkeypatch.setenv("DEMO_MODE", "false")
    monkeypatch.setenv("JWT_SECRET_KEY", NEW_KEY)
    monkeypatch.setenv("JWT_PREVIOUS_SECRET_KEY", previous)
    with pytest.raises(ConfigurationError, match=message):
        load_config("production")
    monkeypatch.setenv("JWT_PREVIOUS_SECRET_KEY", STRANGE_KEY)
    assert load_config("production").JWT_PREVIOUS_SECRET_KEY == STRANGE_KEY
