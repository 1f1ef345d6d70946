"""What the gateway's tests share: API keys made as their owner makes them, OpenAI's SDK pointed
at a live server (every client closed after the test), tiers of a test's own, OpenAI's error
object as the SDK keeps it, and what the ledger charged."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import openai
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.auth.models import Tier
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import LedgerEntry
from tests.conftest import Person
from tests.helpers import scalar


def make_key(client: FlaskClient, person: Person, **fields: Any) -> tuple[int, str]:
    """A new API key of the person's (`fields` as `POST /api/keys` takes them): id and key."""
    made = client.post("/api/keys", json={"name": "sdk", **fields}, headers=person.headers)
    assert made.status_code == 201, made.get_json()
    return made.get_json()["id"], made.get_json()["key"]


class OpenAIClients:
    """OpenAI's SDK, as a client configures it for the gateway (no retries: every answer is
    the server's own); closed on exit, so that no connection outlives its test."""

    def __init__(self) -> None:
        self._opened: list[openai.OpenAI] = []

    def __call__(self, server: str, key: str, **options: Any) -> openai.OpenAI:
        made = openai.OpenAI(
            base_url=f"{server}/v1", api_key=key, max_retries=0, timeout=30, **options
        )
        self._opened.append(made)
        return made

    def __enter__(self) -> OpenAIClients:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for opened in self._opened:
            opened.close()


def add_tier(app: Flask, name: str, **fields: Any) -> None:
    """A committed tier (`allowed_models` "*" and no subscription credits unless told)."""
    settings: dict[str, Any] = {
        "monthly_credits": 0,
        "allowed_models": ["*"],
        "default_max_tokens": 256,
        "max_max_tokens": 1024,
        **fields,
    }
    with app.app_context():
        with write_transaction(db.session):
            db.session.add(Tier(name=name, **settings))
        db.session.remove()


def refused(error: openai.APIStatusError, status: int, code: str) -> dict[str, Any]:
    """OpenAI's error object with this status and code, as the SDK kept it (`body`)."""
    assert error.status_code == status
    body: dict[str, Any] = error.body  # type: ignore[assignment]
    assert set(body) == {"message", "type", "param", "code", "request_id"}
    assert body["code"] == code and body["message"]
    assert body["request_id"] == error.response.headers["X-Request-ID"]
    return body


def hold_of(generation_id: str) -> int:
    """The hold a generation id (`gen-<hold id>`) names."""
    assert generation_id.startswith("gen-")
    return int(generation_id.removeprefix("gen-"))


def charged(app: Flask, hold_id: int | None = None) -> int:
    """What the ledger's `charge` entries took (of one hold's, or of every), in µcr."""
    taken = select(func.sum(LedgerEntry.amount)).where(LedgerEntry.type == "charge")
    if hold_id is not None:
        taken = taken.where(LedgerEntry.hold_id == hold_id)
    return -int(scalar(app, taken) or 0)


def charge_count(app: Flask) -> int:
    count: int = scalar(
        app, select(func.count()).select_from(LedgerEntry).where(LedgerEntry.type == "charge")
    )
    return count
