"""Rows read as plain SQL and made the session's instances (`LedgerSql.instances`), as an ORM
query makes them: every request's API key with its owner, and its signed-in user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect, select, update

from creditapp.auth import api_keys
from creditapp.auth.models import ApiKey, User
from creditapp.errors import InvalidApiKey
from creditapp.extensions import db
from creditapp.ledger.sql import LedgerSql, Statement, columns_of
from tests.conftest import Person
from tests.integration.gateway_client import make_key

KEY_WITH_OWNER = Statement(
    f"SELECT {columns_of(ApiKey, 'k')}, {columns_of(User, 'u')}"
    " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = :key"
)


@pytest.fixture
def key_id(client: FlaskClient, person_factory: object) -> int:
    """A new API key's id (of a new person)."""
    return int(make_key(client, person_factory())[0])  # type: ignore[operator]


def _read(key_id: int) -> tuple[ApiKey, User] | None:
    found: tuple[ApiKey, User] | None = LedgerSql(db.session).instances(
        KEY_WITH_OWNER, (ApiKey, User), key=key_id
    )
    return found


def _columns(instance: object) -> dict[str, object]:
    return {
        attribute.key: getattr(instance, attribute.key)
        for attribute in inspect(type(instance)).column_attrs
    }


def _orm_read(key_id: int) -> tuple[dict[str, object], dict[str, object]]:
    found = db.session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.id == key_id)
    ).one()
    read = (_columns(found[0]), _columns(found[1]))
    db.session.rollback()
    db.session.expunge_all()
    return read


def test_a_row_becomes_the_instances_an_orm_query_gives(
    app: Flask, client: FlaskClient, person_factory: object
) -> None:
    person: Person = person_factory()  # type: ignore[operator]
    expires = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    key_id = int(
        make_key(
            client, person, allowed_models=["openai/gpt-4o-mini", "demo/*"], expires_at=expires
        )[0]
    )
    with app.app_context():
        orm_key, orm_owner = _orm_read(key_id)
        assert orm_key["allowed_models"] == ["openai/gpt-4o-mini", "demo/*"]
        key, owner = _read(key_id)
        # Every column as the ORM reads it: JSON as a list, times aware in UTC.
        assert (_columns(key), _columns(owner)) == (orm_key, orm_owner)
        assert key.expires_at.tzinfo is not None and key.expires_at.utcoffset() == timedelta(0)
        # In the session, unchanged: nothing to flush, and a change is a change.
        assert key in db.session and owner in db.session
        assert not db.session.dirty and not db.session.new
        owner.email = "changed@example.com"
        assert list(db.session.dirty) == [owner]
        db.session.rollback()


def test_the_session_gives_the_instance_it_holds_read_again_where_expired(
    app: Flask, key_id: int
) -> None:
    with app.app_context():
        held = db.session.get(ApiKey, key_id)
        held.name = "not flushed"
        key, _owner = _read(key_id)
        assert key is held and key.name == "not flushed"  # its own change kept, as the ORM does
        db.session.rollback()  # expires it
        db.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(name="renamed"))
        key, _owner = _read(key_id)
        assert key is held and not inspect(key).unloaded  # read with the row, no query more
        assert key.name == "renamed" and not db.session.dirty
        db.session.rollback()


def test_no_row_is_none(app: Flask) -> None:
    with app.app_context():
        assert _read(0) is None
        db.session.rollback()


def test_a_revoked_key_read_so_is_refused(
    app: Flask, client: FlaskClient, person_factory: object
) -> None:
    person: Person = person_factory()  # type: ignore[operator]
    made, secret = make_key(client, person)
    key_id = int(made)
    with app.app_context():
        live = api_keys.authenticate(db.session, secret, now=datetime.now(UTC))
        assert (live.key.id, live.owner.id) == (key_id, person.id)
        db.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC))
        )
        with pytest.raises(InvalidApiKey, match=r"^This API key has been revoked\.$"):
            api_keys.authenticate(db.session, secret, now=datetime.now(UTC))
        db.session.rollback()


def test_the_sessions_changes_are_written_before_the_read(app: Flask, key_id: int) -> None:
    with app.app_context():
        db.session.delete(db.session.get(ApiKey, key_id))  # not flushed: an ORM query would
        assert _read(key_id) is None
        db.session.rollback()
