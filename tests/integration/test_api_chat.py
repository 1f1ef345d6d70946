"""Characters, conversations and messages over HTTP: visibility and every bad input."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Person
from tests.fake_providers import FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation

CHARACTER = {"name": "Ada", "system_prompt": "Be kind.", "provider": "openai", "model": "gpt-test"}


@pytest.fixture(autouse=True)
def priced(app: Flask) -> None:
    add_price(app, "openai", "gpt-test", input="1", output="2")


@pytest.fixture
def user(person_factory: Any) -> Person:
    return person_factory(credits=10_000_000)


def test_users_see_public_characters_and_their_own(
    client: FlaskClient, admin: Person, user: Person, person_factory: Any
) -> None:
    public = client.post(
        "/api/characters", json={**CHARACTER, "public": True}, headers=admin.headers
    )
    assert public.status_code == 201 and public.get_json()["public"] is True
    own = client.post("/api/characters", json=CHARACTER, headers=user.headers).get_json()
    stranger = person_factory()
    hidden = client.post("/api/characters", json=CHARACTER, headers=stranger.headers).get_json()

    listed = client.get("/api/characters", headers=user.headers).get_json()
    assert [c["id"] for c in listed["items"]] == [own["id"], public.get_json()["id"]]
    read = client.get(f"/api/characters/{own['id']}", headers=user.headers)
    assert read.status_code == 200
    assert read.get_json() == {
        **CHARACTER,
        "id": own["id"],
        "public": False,
        "owner_id": str(user.id),
        "created_at": own["created_at"],
    }
    assert own["created_at"].endswith("Z")
    assert_error(
        client.get(f"/api/characters/{hidden['id']}", headers=user.headers), 404, "not_found"
    )
    # Nobody else's private character starts a conversation either.
    assert_error(
        client.post(
            "/api/conversations", json={"character_id": hidden["id"]}, headers=user.headers
        ),
        404,
        "not_found",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"provider": "mistral"}, "provider"),
        ({"model": ""}, "model"),
        ({"public": "yes"}, "public"),
        ({"public": 1}, "public"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_characters_are_400_naming_the_field(
    client: FlaskClient, user: Person, change: dict[str, Any], field: str
) -> None:
    error = assert_error(
        client.post("/api/characters", json={**CHARACTER, **change}, headers=user.headers),
        400,
        "validation_error",
    )
    assert field in error["details"]


def test_only_an_admin_makes_a_public_character(client: FlaskClient, user: Person) -> None:
    """A role's refusal: 403, not a field's 400 (the field is well formed)."""
    refused = client.post(
        "/api/characters", json={**CHARACTER, "public": True}, headers=user.headers
    )
    error = assert_error(refused, 403, "forbidden")
    assert error["message"] == "Only admins may create public characters."


def test_an_unpriced_model_is_refused(client: FlaskClient, user: Person) -> None:
    error = assert_error(
        client.post(
            "/api/characters", json={**CHARACTER, "model": "gpt-unpriced"}, headers=user.headers
        ),
        400,
        "model_not_priced",
    )
    assert error["details"] == {"provider": "openai", "model": "gpt-unpriced"}


def test_conversations_belong_to_their_user(
    client: FlaskClient, user: Person, person_factory: Any
) -> None:
    conversation = start_conversation(client, user, "openai", "gpt-test")
    other = person_factory(credits=10_000_000)
    read = client.get(f"/api/conversations/{conversation}", headers=user.headers)
    assert read.status_code == 200
    listed = client.get("/api/conversations", headers=user.headers).get_json()
    assert listed["items"] == [read.get_json()]
    assert read.get_json() == {
        "id": conversation,
        "character_id": read.get_json()["character_id"],
        "created_at": read.get_json()["created_at"],
    }
    character = client.get(
        f"/api/characters/{read.get_json()['character_id']}", headers=user.headers
    ).get_json()
    assert (character["name"], character["model"]) == ("Tester", "gpt-test")
    for path in (
        f"/api/conversations/{conversation}",
        f"/api/conversations/{conversation}/messages",
    ):
        assert_error(client.get(path, headers=other.headers), 404, "not_found")
    assert_error(send(client, other, conversation), 404, "not_found")
    assert client.get("/api/conversations", headers=other.headers).get_json()["items"] == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/characters/abc", "character_id"),
        ("/api/conversations/-1", "conversation_id"),
        ("/api/conversations/1x/messages", "conversation_id"),
    ],
)
def test_malformed_ids_in_paths_are_400(
    client: FlaskClient, user: Person, path: str, field: str
) -> None:
    error = assert_error(client.get(path, headers=user.headers), 400, "validation_error")
    assert field in error["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "character_id"),
        ({"character_id": 1}, "character_id"),
        ({"character_id": "x"}, "character_id"),
    ],
)
def test_bad_conversations_are_400(
    client: FlaskClient, user: Person, body: dict[str, Any], field: str
) -> None:
    error = assert_error(
        client.post("/api/conversations", json=body, headers=user.headers), 400, "validation_error"
    )
    assert field in error["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "content"),
        ({"content": ""}, "content"),
        ({"content": "x" * 16_001}, "content"),
        ({"content": 5}, "content"),
        ({"content": "hi", "max_tokens": 0}, "max_tokens"),
        ({"content": "hi", "max_tokens": -3}, "max_tokens"),
        ({"content": "hi", "max_tokens": "10"}, "max_tokens"),
        ({"content": "hi", "max_tokens": 10.5}, "max_tokens"),
        ({"content": "hi", "max_tokens": 1025}, "max_tokens"),
        ({"content": "hi", "stream": "yes"}, "stream"),
        ({"content": "hi", "stream": 1}, "stream"),
    ],
)
def test_bad_messages_are_400_and_call_nothing(
    client: FlaskClient,
    user: Person,
    fake_providers: FakeProviders,
    body: dict[str, Any],
    field: str,
) -> None:
    conversation = start_conversation(client, user, "openai", "gpt-test")
    response = client.post(
        f"/api/conversations/{conversation}/messages",
        json=body,
        headers={**user.headers, "Idempotency-Key": "k"},
    )
    error = assert_error(response, 400, "validation_error")
    assert field in error["details"]
    assert fake_providers.calls("openai") == []


def test_a_message_needs_an_idempotency_key_json_and_a_token(
    client: FlaskClient, user: Person, fake_providers: FakeProviders
) -> None:
    conversation = start_conversation(client, user, "openai", "gpt-test")
    path = f"/api/conversations/{conversation}/messages"
    error = assert_error(
        client.post(path, json={"content": "hi"}, headers=user.headers), 400, "validation_error"
    )
    assert "Idempotency-Key" in error["details"]
    assert_error(
        client.post(path, json={"content": "hi"}, headers={**user.headers, "Idempotency-Key": "é"}),
        400,
        "validation_error",
    )
    assert_error(
        client.post(
            path,
            data="content=hi",
            headers={**user.headers, "Idempotency-Key": "k", "Content-Type": "text/plain"},
        ),
        415,
        "unsupported_media_type",
    )
    assert_error(
        client.post(
            path,
            data="{",
            headers={**user.headers, "Idempotency-Key": "k2", "Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    assert_error(client.post(path, json={"content": "hi"}), 401, "unauthorized")
    assert fake_providers.calls("openai") == []
