"""A metered call claims its Idempotency-Key in its hold's transaction: a refused hold leaves
the key free with nothing written, and a repeat is answered with its stored response even when
the request, run again, would now be refused before it reached its key."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from creditapp import idempotency
from creditapp.auth.models import User
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, give_credits, scalar, start_conversation
from tests.integration.gateway_client import add_tier, make_key

USAGE = {"prompt_tokens": 20, "completion_tokens": 5}
CR = 1_000_000


def _keys(app: Flask, key: str) -> int:
    return int(
        scalar(
            app,
            select(func.count()).select_from(idempotency.keys).where(idempotency.keys.c.key == key),
        )
    )


def _give(app: Flask, person: Person) -> None:
    with app.app_context():
        give_credits(person.account_id, CR)
        db.session.remove()


def _send(client: FlaskClient, person: Person, conversation: str, key: str) -> Any:
    return client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Hello there", "max_tokens": 10},
        headers={**person.headers, "Idempotency-Key": key},
    )


def test_a_refused_hold_leaves_its_key_free_with_nothing_written(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory()
    add_price(app, "openai", "gpt-claimed", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-claimed")
    key = secrets.token_hex(8)

    assert_error(_send(client, person, conversation, key), 402, "insufficient_credits")
    assert _keys(app, key) == 0
    # The same key, once the credits are there, runs the request: it was never claimed.
    _give(app, person)
    fake_providers.script("openai", Answer(usage=USAGE))
    sent = _send(client, person, conversation, key)
    assert sent.status_code == 201, sent.get_json()
    assert "Idempotent-Replayed" not in sent.headers
    assert _keys(app, key) == 1


def _tier_of(app: Flask, person: Person, tier: str) -> None:
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(update(User).where(User.id == person.id).values(tier_name=tier))
        db.session.remove()


def test_a_repeat_is_replayed_though_the_request_would_now_be_refused(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=CR)
    add_price(app, "openai", "gpt-claimed", input="1", output="2")
    tier = f"no-models-{secrets.token_hex(3)}"
    add_tier(app, tier, allowed_models=[])
    conversation = start_conversation(client, person, "openai", "gpt-claimed")
    key = secrets.token_hex(8)
    fake_providers.script("openai", Answer(usage=USAGE))
    first = _send(client, person, conversation, key)
    assert first.status_code == 201, first.get_json()

    # The person's tier no longer allows the model: the request is refused as it is read...
    _tier_of(app, person, tier)
    assert_error(_send(client, person, conversation, "another"), 403, "model_not_allowed")
    # ...but its repeat is answered with what it was answered, and nothing runs again.
    again = _send(client, person, conversation, key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert len(fake_providers.calls("openai")) == 1
    # The same key for another request is still a conflict, refused or not.
    assert_error(
        client.post(
            f"/api/conversations/{conversation}/messages",
            json={"content": "Something else", "max_tokens": 10},
            headers={**person.headers, "Idempotency-Key": key},
        ),
        409,
        "idempotency_key_reused",
    )


def test_a_gateway_call_refused_its_hold_leaves_its_key_free(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory()
    add_price(app, "openai", "gpt-claimed", input="1", output="2")
    _id, api_key = make_key(client, person)
    key = secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    call = {"model": "openai/gpt-claimed", "messages": [{"role": "user", "content": "Hi"}]}

    refused = client.post("/v1/chat/completions", json=call, headers=headers)
    assert refused.status_code == 402
    assert _keys(app, key) == 0
    _give(app, person)
    fake_providers.script("openai", Answer(usage=USAGE))
    answered = client.post("/v1/chat/completions", json=call, headers=headers)
    assert answered.status_code == 200, answered.get_json()
    assert "Idempotent-Replayed" not in answered.headers
