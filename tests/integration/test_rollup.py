"""Usage roll-ups: the usage endpoint answers the same before, during and after them, and they
count each record once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.billing.models import UsageRollup
from creditapp.extensions import db
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    charged_messages,
    run_job_at,
    run_job_at_once,
    scalar,
    send,
    start_conversation,
)

postgres_only = pytest.mark.postgres_only

CREDIT = 1_000_000


def usage_answers(client: FlaskClient, person: Person) -> list[Any]:
    today = utcnow().date()

    def moment(delta: timedelta) -> str:
        return (utcnow() + delta).isoformat().replace("+00:00", "Z")

    queries = [
        f"from={today}&to={today}",
        f"from={today - timedelta(days=3)}&to={today}&group_by=model",
        f"from={today}&group_by=provider",
        f"from={today - timedelta(days=1)}&to={today}&group_by=day_model",
        f"from={moment(-timedelta(minutes=1))}&to={moment(timedelta(minutes=1))}",
    ]
    return [
        client.get(f"/api/credit/usage?{query}", headers=person.headers).get_json()["groups"]
        for query in queries
    ]


def test_usage_answers_are_the_same_before_and_after_roll_ups(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    charged_messages(app, client, person, fake_providers, 6)
    before = usage_answers(client, person)
    assert before[0][0]["requests"] == 6

    assert run_job_at(app, "rollup", utcnow())["rolled_up"] == 6
    assert usage_answers(client, person) == before
    assert run_job_at(app, "rollup", utcnow())["rolled_up"] == 0
    assert usage_answers(client, person) == before
    # New records after a roll-up count once too.
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 50}))
    conversation = start_conversation(client, person, "openai", "gpt-jobs")
    send(client, person, conversation)
    after = usage_answers(client, person)
    assert after[0][0]["requests"] == 7 and after[0][0]["credits"] == "1.4"
    with app.app_context():
        rollup = db.session.scalars(select(UsageRollup)).one()
        assert (rollup.requests, rollup.credits) == (6, 1_200_000)
        db.session.remove()


@postgres_only
def test_two_roll_ups_at_once_count_each_record_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    people = [person_factory(credits=10 * CREDIT) for _ in range(3)]
    for person in people:
        charged_messages(app, client, person, fake_providers, 5)
    before = [usage_answers(client, person) for person in people]
    results = run_job_at_once(app, "rollup", utcnow(), 2)
    assert sum(result["rolled_up"] for result in results) == 15
    assert scalar(app, select(func.sum(UsageRollup.requests))) == 15
    assert [usage_answers(client, person) for person in people] == before
