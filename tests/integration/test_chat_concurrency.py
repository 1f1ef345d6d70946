"""Sixty messages at once from one user, through a real multi-process server on PostgreSQL."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.billing.models import UsageRecord
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, start_conversation
from tests.integration.live_server import call, live_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.real_clock]

# "Be brief." and "Hello there", each with 8 tokens of format: 36 input tokens at 1 USD/1M,
# and 100 output tokens at 2 USD/1M.
WORST_CASE = 36 * 1_000 + 100 * 2_000


def test_sixty_messages_at_once_spend_exactly_what_twenty_worst_cases_cover(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=20 * WORST_CASE)
    add_price(app, "openai", "gpt-race", input="1", output="2")
    conversations = [start_conversation(client, person, "openai", "gpt-race") for _ in range(60)]
    # Every call costs exactly its hold, so no settle frees credits for a later message.
    usage = {"prompt_tokens": 36, "completion_tokens": 100}
    fake_providers.script("openai", *(Answer(usage=usage) for _ in range(60)))
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "DATABASE_POOL_SIZE": "16",
        # A provider slowed by a loaded machine must not time out: a 502 would free its hold
        # while other messages were refused, and the count would no longer be exact.
        "PROVIDER_TIMEOUT_SECONDS": "60",
    }
    body = json.dumps({"content": "Hello there", "max_tokens": 100}).encode()

    with live_server(env, workers=4, threads=16) as base:

        def send(index: int) -> int:
            status, _headers, _body = call(
                "POST",
                f"{base}/api/conversations/{conversations[index]}/messages",
                person.token,
                body,
                headers={"Idempotency-Key": f"race-{index}"},
            )
            return int(status)

        with ThreadPoolExecutor(max_workers=60) as pool:
            statuses = list(pool.map(send, range(60)))

    assert sorted(statuses) == [201] * 20 + [402] * 40, statuses
    assert len(fake_providers.calls("openai")) == 20
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("0", "0")
    with app.app_context():
        assert ledger.reconcile(db.session) == []
        assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 20
        statuses_of_holds = db.session.scalars(select(Hold.status)).all()
        assert sorted(statuses_of_holds) == ["settled"] * 20
        db.session.remove()
