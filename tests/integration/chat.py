"""Helpers for tests of the chat path: price rows, characters, conversations, messages."""

from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.pricing import book
from tests.conftest import Person, utcnow

MILLION_CREDITS = 1_000_000 * 1_000_000


def add_price(
    app: Flask,
    provider: str,
    model: str,
    *,
    input: str,
    output: str,
    cached_input: str | None = None,
    cache_write: str | None = None,
    prompt_tiers: list[dict[str, Any]] | None = None,
    effective_from: Any = None,
) -> int:
    """A committed price row, in force since an hour ago unless told otherwise."""
    with app.app_context():
        with write_transaction(db.session):
            price = book.add(
                db.session,
                provider=provider,
                model=model,
                rates=book.Rates(
                    Decimal(input),
                    Decimal(output),
                    None if cached_input is None else Decimal(cached_input),
                    None if cache_write is None else Decimal(cache_write),
                ),
                effective_from=effective_from or utcnow() - timedelta(hours=1),
                prompt_tiers=prompt_tiers,
                source="tests",
                now=utcnow(),
            )
        price_id = price.id
        db.session.remove()
    return int(price_id)


def start_conversation(client: FlaskClient, person: Person, provider: str, model: str) -> str:
    """A character of the person's own for the model, and a conversation with it."""
    character = client.post(
        "/api/characters",
        json={"name": "Tester", "system_prompt": "Be brief.", "provider": provider, "model": model},
        headers=person.headers,
    )
    assert character.status_code == 201, character.get_json()
    conversation = client.post(
        "/api/conversations",
        json={"character_id": character.get_json()["id"]},
        headers=person.headers,
    )
    assert conversation.status_code == 201, conversation.get_json()
    return str(conversation.get_json()["id"])


def send(
    client: FlaskClient,
    person: Person,
    conversation_id: str,
    content: str = "Hello there",
    *,
    key: str | None = None,
    **fields: Any,
) -> TestResponse:
    return client.post(
        f"/api/conversations/{conversation_id}/messages",
        json={"content": content, **fields},
        headers={**person.headers, "Idempotency-Key": key or secrets.token_hex(8)},
    )
