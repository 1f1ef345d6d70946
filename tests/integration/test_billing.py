"""Billing exactness: each provider's real wire format, through its official SDK and the
message endpoint, charges exactly the contract's cost, rounded up once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp.billing.models import UsageRecord
from creditapp.extensions import db
from creditapp.ledger.models import LedgerEntry
from creditapp.money import parse_credits
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import MILLION_CREDITS, add_price, send, start_conversation
from tests.integration.gateway_client import add_tier

GEMINI_TIERS = [
    {
        "above_input_tokens": 200000,
        "input": "2.5",
        "cached_input": "0.25",
        "cache_write": None,
        "output": "15",
    }
]
PRICES: dict[tuple[str, str], dict[str, Any]] = {
    ("openai", "gpt-test"): {"input": "2.5", "cached_input": "1.25", "output": "10"},
    ("openai", "gpt-tiny"): {"input": "0.000001", "output": "0.000003"},
    ("anthropic", "claude-test"): {
        "input": "3",
        "cached_input": "0.3",
        "cache_write": "3.75",
        "output": "15",
    },
    ("anthropic", "claude-tiny"): {"input": "0.000001", "output": "0.000001"},
    ("google", "gemini-test"): {
        "input": "1.25",
        "cached_input": "0.125",
        "output": "10",
        "prompt_tiers": GEMINI_TIERS,
    },
    ("google", "gemini-tiny"): {"input": "0.000001", "output": "0.000001"},
}


def _usage(
    input: int, output: int, cached: int = 0, write: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input,
        "cached_tokens": cached,
        "cache_write_tokens": write,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
        "estimated": False,
    }


# (case, model, the provider's own usage fields, normalized usage, charge in µcr)
OPENAI = [
    (
        "uncached",
        "gpt-test",
        {"prompt_tokens": 100, "completion_tokens": 50},
        _usage(100, 50),
        750_000,
    ),
    (
        "cached reads",
        "gpt-test",
        {
            "prompt_tokens": 1000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 600},
        },
        _usage(1000, 10, cached=600),
        1_850_000,
    ),
    (
        "reasoning",
        "gpt-test",
        {
            "prompt_tokens": 20,
            "completion_tokens": 500,
            "completion_tokens_details": {"reasoning_tokens": 400},
        },
        _usage(20, 500, reasoning=400),
        5_050_000,
    ),
    (
        "cache writes at the input price",
        "gpt-test",
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 40},
        },
        _usage(100, 10, write=40),
        350_000,
    ),
    ("no output", "gpt-test", {"prompt_tokens": 7, "completion_tokens": 0}, _usage(7, 0), 17_500),
    (
        "null details",
        "gpt-test",
        {
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        _usage(3, 1),
        17_500,
    ),
    (
        "everything",
        "gpt-test",
        {
            "prompt_tokens": 123457,
            "completion_tokens": 4321,
            "prompt_tokens_details": {"cached_tokens": 100000},
            "completion_tokens_details": {"reasoning_tokens": 1000},
        },
        _usage(123457, 4321, cached=100000, reasoning=1000),
        226_852_500,
    ),
    (
        "tiny price rounds up",
        "gpt-tiny",
        {"prompt_tokens": 1, "completion_tokens": 1},
        _usage(1, 1),
        1,
    ),
    (
        "tiny price just below one",
        "gpt-tiny",
        {"prompt_tokens": 999, "completion_tokens": 0},
        _usage(999, 0),
        1,
    ),
    (
        "tiny price exactly one",
        "gpt-tiny",
        {"prompt_tokens": 1000, "completion_tokens": 0},
        _usage(1000, 0),
        1,
    ),
    (
        "tiny price just above one",
        "gpt-tiny",
        {"prompt_tokens": 1001, "completion_tokens": 0},
        _usage(1001, 0),
        2,
    ),
]
ANTHROPIC = [
    (
        "uncached",
        "claude-test",
        {"input_tokens": 100, "output_tokens": 50},
        _usage(100, 50),
        1_050_000,
    ),
    (
        "cache reads",
        "claude-test",
        {"input_tokens": 10, "cache_read_input_tokens": 1000, "output_tokens": 20},
        _usage(1010, 20, cached=1000),
        630_000,
    ),
    (
        "cache writes",
        "claude-test",
        {"input_tokens": 10, "cache_creation_input_tokens": 2000, "output_tokens": 5},
        _usage(2010, 5, write=2000),
        7_605_000,
    ),
    (
        "reads and writes",
        "claude-test",
        {
            "input_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 200,
            "output_tokens": 1,
        },
        _usage(305, 1, cached=100, write=200),
        810_000,
    ),
    (
        "thinking",
        "claude-test",
        {
            "input_tokens": 50,
            "output_tokens": 800,
            "output_tokens_details": {"thinking_tokens": 600},
        },
        _usage(50, 800, reasoning=600),
        12_150_000,
    ),
    (
        "null cache fields",
        "claude-test",
        {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
        },
        _usage(100, 50),
        1_050_000,
    ),
    (
        "everything",
        "claude-test",
        {
            "input_tokens": 1,
            "cache_read_input_tokens": 150000,
            "cache_creation_input_tokens": 50000,
            "output_tokens": 8000,
        },
        _usage(200001, 8000, cached=150000, write=50000),
        352_503_000,
    ),
    (
        "tiny price rounds up",
        "claude-tiny",
        {"input_tokens": 1, "output_tokens": 1},
        _usage(1, 1),
        1,
    ),
    (
        "tiny price just below one",
        "claude-tiny",
        {"input_tokens": 500, "output_tokens": 499},
        _usage(500, 499),
        1,
    ),
    (
        "tiny price just above one",
        "claude-tiny",
        {"input_tokens": 500, "output_tokens": 501},
        _usage(500, 501),
        2,
    ),
]
GOOGLE = [
    (
        "uncached",
        "gemini-test",
        {"promptTokenCount": 100, "candidatesTokenCount": 50},
        _usage(100, 50),
        625_000,
    ),
    (
        "cached",
        "gemini-test",
        {"promptTokenCount": 1000, "cachedContentTokenCount": 800, "candidatesTokenCount": 10},
        _usage(1000, 10, cached=800),
        450_000,
    ),
    (
        "thoughts",
        "gemini-test",
        {"promptTokenCount": 10, "candidatesTokenCount": 20, "thoughtsTokenCount": 300},
        _usage(10, 320, reasoning=300),
        3_212_500,
    ),
    (
        "tool use prompt",
        "gemini-test",
        {"promptTokenCount": 100, "toolUsePromptTokenCount": 50, "candidatesTokenCount": 10},
        _usage(150, 10),
        287_500,
    ),
    (
        "cached with thoughts",
        "gemini-test",
        {
            "promptTokenCount": 500,
            "cachedContentTokenCount": 500,
            "candidatesTokenCount": 0,
            "thoughtsTokenCount": 10,
        },
        _usage(500, 10, cached=500, reasoning=10),
        162_500,
    ),
    (
        "at the tier threshold",
        "gemini-test",
        {"promptTokenCount": 200000, "candidatesTokenCount": 100},
        _usage(200000, 100),
        251_000_000,
    ),
    (
        "above the tier threshold",
        "gemini-test",
        {"promptTokenCount": 200001, "candidatesTokenCount": 100},
        _usage(200001, 100),
        501_502_500,
    ),
    (
        "large",
        "gemini-test",
        {"promptTokenCount": 54321, "candidatesTokenCount": 1234},
        _usage(54321, 1234),
        80_241_250,
    ),
    (
        "tiny price rounds up",
        "gemini-tiny",
        {"promptTokenCount": 1, "candidatesTokenCount": 0},
        _usage(1, 0),
        1,
    ),
    ("tiny price just below one", "gemini-tiny", {"promptTokenCount": 999}, _usage(999, 0), 1),
    (
        "tiny price just above one",
        "gemini-tiny",
        {"promptTokenCount": 1001, "candidatesTokenCount": 0},
        _usage(1001, 0),
        2,
    ),
]
CASES = [
    pytest.param(provider, *case[1:], id=f"{provider}: {case[0]}")
    for provider, table in (("openai", OPENAI), ("anthropic", ANTHROPIC), ("google", GOOGLE))
    for case in table
]


@pytest.fixture
def priced(app: Flask) -> None:
    for (provider, model), price in PRICES.items():
        add_price(app, provider, model, **price)


@pytest.mark.parametrize(("provider", "model", "wire_usage", "normalized", "charge"), CASES)
def test_a_call_is_charged_exactly_its_cost(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    provider: str,
    model: str,
    wire_usage: dict[str, Any],
    normalized: dict[str, Any],
    charge: int,
) -> None:
    # A tier whose calls may write every case's output (a provider writes no more than a
    # call's max_tokens, and a report of more is charged as max_tokens).
    add_tier(app, "long-answers", default_max_tokens=10_000, max_max_tokens=10_000)
    person: Person = person_factory(credits=MILLION_CREDITS, tier="long-answers")
    conversation = start_conversation(client, person, provider, model)
    fake_providers.script(provider, Answer(text="Fine, thanks.", usage=wire_usage))

    response = send(client, person, conversation)

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["usage"] == normalized
    assert parse_credits(body["credits_charged"]) == charge
    assert parse_credits(body["balance"]["balance"]) == MILLION_CREDITS - charge
    assert body["balance"]["reserved"] == "0"
    assert body["reply"]["content"] == "Fine, thanks."
    with app.app_context():
        record = db.session.scalars(select(UsageRecord)).one()
        assert (record.cost, record.credits_charged) == (charge, charge)
        charges = db.session.scalars(
            select(LedgerEntry.amount).where(LedgerEntry.type == "charge")
        ).all()
        assert sum(charges) == -charge


def test_a_price_change_between_two_calls_prices_each_by_the_row_in_force(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person: Person = person_factory(credits=MILLION_CREDITS)
    first_price = add_price(app, "openai", "gpt-change", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-change")
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    fake_providers.script("openai", Answer(usage=usage), Answer(usage=usage))

    first = send(client, person, conversation)
    second_price = add_price(
        app, "openai", "gpt-change", input="3", output="4", effective_from=utcnow()
    )
    # A price that takes effect later does not apply yet.
    add_price(
        app,
        "openai",
        "gpt-change",
        input="100",
        output="100",
        effective_from=utcnow() + timedelta(hours=1),
    )
    second = send(client, person, conversation)

    assert parse_credits(first.get_json()["credits_charged"]) == 1000 * 1000 + 100 * 2000
    assert parse_credits(second.get_json()["credits_charged"]) == 1000 * 3000 + 100 * 4000
    with app.app_context():
        price_ids = db.session.scalars(select(UsageRecord.price_id).order_by(UsageRecord.id)).all()
    assert price_ids == [first_price, second_price]
