"""GET /api/credit/usage: the caller's calls and credits, grouped, over validated ranges."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, new_team, run_job_at, send, start_conversation

ZERO = {
    "requests": 0,
    "input_tokens": 0,
    "cached_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "credits": "0",
}


@pytest.fixture
def spender(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> Person:
    """Three calls: two to OpenAI (one cached, one reasoning), one to Anthropic (cache write)."""
    add_price(app, "openai", "gpt-test", input="1", cached_input="0.5", output="2")
    add_price(app, "anthropic", "claude-test", input="3", cache_write="3.75", output="15")
    person: Person = person_factory(credits=100_000_000)
    openai = start_conversation(client, person, "openai", "gpt-test")
    anthropic = start_conversation(client, person, "anthropic", "claude-test")
    fake_providers.script(
        "openai",
        Answer(
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 40},
            }
        ),
        Answer(
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 30,
                "completion_tokens_details": {"reasoning_tokens": 20},
            }
        ),
    )
    fake_providers.script(
        "anthropic",
        Answer(usage={"input_tokens": 10, "cache_creation_input_tokens": 100, "output_tokens": 5}),
    )
    for conversation in (openai, openai, anthropic):
        assert send(client, person, conversation).status_code == 201
    # Someone else's usage is never counted.
    other = person_factory(credits=100_000_000)
    send(client, other, start_conversation(client, other, "openai", "gpt-test"))
    return person


def counts(
    requests: int, input: int, cached: int, write: int, output: int, reasoning: int, credits: str
) -> dict[str, Any]:
    return {
        "requests": requests,
        "input_tokens": input,
        "cached_tokens": cached,
        "cache_write_tokens": write,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
        "credits": credits,
    }


# OpenAI: 60*1000 + 40*500 + 10*2000 = 100000 and 50*1000 + 30*2000 = 110000 µcr;
# Anthropic: 10*3000 + 100*3750 + 5*15000 = 480000 µcr.
OPENAI = counts(2, 150, 40, 0, 40, 20, "0.21")
ANTHROPIC = counts(1, 110, 0, 100, 5, 0, "0.48")
TOTAL = counts(3, 260, 40, 100, 45, 20, "0.69")


def test_usage_grouped_by_model_provider_and_day(client: FlaskClient, spender: Person) -> None:
    by_model = client.get("/api/credit/usage?group_by=model", headers=spender.headers).get_json()
    assert by_model["totals"] == TOTAL
    assert by_model["groups"] == [
        {"key": "anthropic:claude-test", **ANTHROPIC},
        {"key": "openai:gpt-test", **OPENAI},
    ]
    by_provider = client.get(
        "/api/credit/usage?group_by=provider", headers=spender.headers
    ).get_json()
    assert [g["key"] for g in by_provider["groups"]] == ["anthropic", "openai"]
    today = utcnow().date().isoformat()
    by_day = client.get(
        f"/api/credit/usage?from={today}&to={today}", headers=spender.headers
    ).get_json()
    assert by_day["group_by"] == "day"
    assert by_day["groups"] == [{"key": today, **TOTAL}]
    assert by_day["from"] == f"{today}T00:00:00Z"
    assert by_day["to"] == f"{today}T23:59:59.999999Z"
    by_day_and_model = client.get(
        "/api/credit/usage?group_by=day_model", headers=spender.headers
    ).get_json()
    assert by_day_and_model["totals"] == TOTAL
    assert by_day_and_model["groups"] == [
        {"key": f"{today} anthropic:claude-test", **ANTHROPIC},
        {"key": f"{today} openai:gpt-test", **OPENAI},
    ]


def test_ranges_are_inclusive_and_exclude_what_lies_outside(
    client: FlaskClient, spender: Person
) -> None:
    yesterday = (utcnow() - timedelta(days=1)).date()
    a_year_before = (yesterday - timedelta(days=365)).isoformat()
    before = client.get(
        f"/api/credit/usage?from={a_year_before}&to={yesterday.isoformat()}",
        headers=spender.headers,
    )
    assert before.get_json()["totals"] == ZERO and before.get_json()["groups"] == []
    moment = (utcnow() + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    up_to_now = client.get(f"/api/credit/usage?to={moment}", headers=spender.headers).get_json()
    assert up_to_now["totals"] == TOTAL


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-05-02&to=2026-05-01", "from"),
        ("from=2025-01-01&to=2026-05-01", "to"),
        ("from=2026-02-30", "from"),
        ("to=tomorrow", "to"),
        ("group_by=week", "group_by"),
        ("groupby=day", "groupby"),
    ],
)
def test_bad_ranges_are_400(
    client: FlaskClient, person_factory: Any, query: str, field: str
) -> None:
    person = person_factory()
    error = assert_error(
        client.get(f"/api/credit/usage?{query}", headers=person.headers), 400, "validation_error"
    )
    assert field in error["details"]


def _team_with_credits(app: Flask, owner: Person, member: Person) -> int:
    """A team of the owner and the member, with 10 credits; its id."""
    with app.app_context():
        team_id, team_account = new_team(owner.id, member.id)
        with write_transaction(db.session):
            ledger.grant(
                db.session,
                account_id=team_account,
                amount=10_000_000,
                source="promo",
                reason="team credits",
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    return int(team_id)


def test_what_a_team_paid_is_in_the_teams_report_not_in_the_members_own(
    app: Flask,
    client: FlaskClient,
    spender: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    owner = person_factory()
    team_id = _team_with_credits(app, owner, spender)
    # 100*1000 + 10*2000 = 120000 µcr, paid by the team.
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 10}))
    conversation = start_conversation(client, spender, "openai", "gpt-test")
    assert send(client, spender, conversation, team_id=str(team_id)).status_code == 201
    team_paid = counts(1, 100, 0, 0, 10, 0, "0.12")

    # Read from the records, then from the roll-ups (kept per paying account): the same.
    for rolled_up in (False, True):
        if rolled_up:
            assert run_job_at(app, "rollup", utcnow())["rolled_up"] == 5
        own = client.get("/api/credit/usage?group_by=model", headers=spender.headers).get_json()
        assert own["totals"] == TOTAL
        team = client.get(
            f"/api/teams/{team_id}/usage?group_by=member", headers=owner.headers
        ).get_json()
        assert team["groups"] == [{"key": spender.email, **team_paid}]
        mine_in_team = client.get(
            f"/api/teams/{team_id}/usage?group_by=model", headers=spender.headers
        ).get_json()
        assert mine_in_team["groups"] == [{"key": "openai:gpt-test", **team_paid}]


def test_a_members_email_a_spreadsheet_would_run_is_exported_as_text(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """A member chose their address: the team's CSV must not hand the owner's spreadsheet a
    formula. Numbers (a negative amount) stay numbers."""
    add_price(app, "openai", "gpt-test", input="1", output="2")
    owner, member = person_factory(), person_factory(email="=1+2@example.com")
    team_id = _team_with_credits(app, owner, member)
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 100, "completion_tokens": 10}))
    conversation = start_conversation(client, member, "openai", "gpt-test")
    assert send(client, member, conversation, team_id=str(team_id)).status_code == 201
    exported = client.get(
        f"/api/teams/{team_id}/usage?group_by=member&format=csv", headers=owner.headers
    )
    assert exported.status_code == 200
    [row] = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert row["key"] == "'=1+2@example.com"
    assert row["credits"] == "0.12"
    entries = client.get(
        f"/api/teams/{team_id}/transactions?format=csv", headers=owner.headers
    ).get_data(as_text=True)
    amounts = [entry["amount"] for entry in csv.DictReader(io.StringIO(entries))]
    assert sorted(amounts) == ["-0.12", "10"], amounts
