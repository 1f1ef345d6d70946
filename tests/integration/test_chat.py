"""The message endpoint: holds, provider failures, empty replies, tiers and idempotency."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.billing.models import Compensation, UsageRecord
from creditapp.chat.models import Message
from creditapp.extensions import db
from creditapp.idempotency import IdempotencyKey
from creditapp.ledger.models import Hold, LedgerEntry
from creditapp.metering.providers import ChatMessage, ChatRequest, Connection, OpenAIProvider
from creditapp.money import parse_credits
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, send, start_conversation

CREDITS = 100 * 1_000_000
MODELS = {"openai": "gpt-test", "anthropic": "claude-test", "google": "gemini-test"}
PROVIDERS = list(MODELS)


@pytest.fixture
def priced(app: Flask) -> None:
    for provider, model in MODELS.items():
        add_price(app, provider, model, input="1", output="2")


def balance_of(client: FlaskClient, person: Person) -> dict[str, str]:
    response = client.get("/api/credit/balance", headers=person.headers)
    return {key: response.get_json()[key] for key in ("balance", "reserved", "available")}


def counts(app: Flask) -> dict[str, int]:
    with app.app_context():
        return {
            "messages": db.session.scalar(select(func.count()).select_from(Message)),
            "usage": db.session.scalar(select(func.count()).select_from(UsageRecord)),
            "charges": db.session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.type == "charge")
            ),
            "pending_holds": db.session.scalar(
                select(func.count()).select_from(Hold).where(Hold.status == "pending")
            ),
        }


NOTHING = {"messages": 0, "usage": 0, "charges": 0, "pending_holds": 0}
FAILURES = {
    "500": Answer(status=500),
    "429": Answer(status=429),
    "timeout": Answer(delay=1.5),
    "malformed": Answer(raw_body=b"{not json"),
    "impossible usage": Answer(
        usage={
            "prompt_tokens": -5,
            "completion_tokens": 1,
            "input_tokens": -5,
            "output_tokens": 1,
            "promptTokenCount": -5,
            "candidatesTokenCount": 1,
        }
    ),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_call_is_a_502_that_charges_and_reserves_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    provider: str,
    failure: str,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, provider, MODELS[provider])
    fake_providers.script(provider, FAILURES[failure])

    response = send(client, person, conversation, key="retry-me")

    assert response.status_code == 502, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "provider_error" and error["details"]["provider"] == provider
    assert balance_of(client, person) == {"balance": "100", "reserved": "0", "available": "100"}
    assert counts(app) == NOTHING
    with app.app_context():
        assert db.session.scalars(select(Hold.status)).all() == ["voided"]
    # The key was freed: the same request runs again, and this time the provider answers.
    retried = send(client, person, conversation, key="retry-me")
    assert retried.status_code == 201
    assert len(fake_providers.calls(provider)) == 2


# Chat Completions answers that are JSON but not of its documented shape.
MISSHAPEN_OPENAI_ANSWERS = {
    "a list": b"[]",
    "no choices": b'{"choices": []}',
    "content not text": b'{"choices": [{"message": {"content": 5}}]}',
    "count not a number": b'{"choices": [{"message": {"content": "Hi"}}],'
    b' "usage": {"prompt_tokens": "many", "completion_tokens": 1}}',
    "details not an object": b'{"choices": [{"message": {"content": "Hi"}}],'
    b' "usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": 5}}',
    "content false": b'{"choices": [{"message": {"content": false}}]}',
    **{
        f"a count of {count.decode()}": b'{"choices": [{"message": {"content": "Hi"}}],'
        b' "usage": {"prompt_tokens": ' + count + b', "completion_tokens": 1}}'
        for count in (b'"12"', b"3.7", b"true", b"NaN", b"1e999")
    },
    "nested too deep": b'{"choices": [{"message": {"content": "Hi"}}], "usage": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
}


@pytest.mark.parametrize("answer", list(MISSHAPEN_OPENAI_ANSWERS))
def test_an_answer_not_of_the_documented_shape_is_a_502_that_charges_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    answer: str,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", MODELS["openai"])
    fake_providers.script("openai", Answer(raw_body=MISSHAPEN_OPENAI_ANSWERS[answer]))

    response = send(client, person, conversation)

    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["details"] == {
        "provider": "openai",
        "reason": "unreadable response",
    }
    assert balance_of(client, person) == {"balance": "100", "reserved": "0", "available": "100"}
    assert counts(app) == NOTHING


def test_missing_usage_is_estimated_and_charged(
    client: FlaskClient, person_factory: Any, fake_providers: FakeProviders, priced: None
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", "gpt-test")
    fake_providers.script("openai", Answer(text="x" * 40, usage=None))

    body = send(client, person, conversation, "y" * 400).get_json()

    usage = body["usage"]
    assert usage["estimated"] is True
    # About four bytes a token, plus the format's tokens per message.
    assert usage["input_tokens"] == (9 + 3) // 4 + 4 + 400 // 4 + 4
    assert usage["output_tokens"] == 40 // 4 + 4
    assert (
        parse_credits(body["credits_charged"])
        == usage["input_tokens"] * 1000 + usage["output_tokens"] * 2000
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_empty_reply_is_charged_then_refunded_at_once(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    provider: str,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, provider, MODELS[provider])
    wire = {
        "openai": {"prompt_tokens": 10, "completion_tokens": 0},
        "anthropic": {"input_tokens": 10, "output_tokens": 0},
        "google": {"promptTokenCount": 10, "candidatesTokenCount": 0},
    }[provider]
    fake_providers.script(provider, Answer(text="", usage=wire))

    response = send(client, person, conversation, key="empty")

    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "provider_error"
    assert error["details"]["credits_charged"] == "0.01"
    assert balance_of(client, person) == {"balance": "100", "reserved": "0", "available": "100"}
    with app.app_context():
        amounts = db.session.execute(
            select(LedgerEntry.type, LedgerEntry.amount)
            .where(LedgerEntry.type.in_(("charge", "refund")))
            .order_by(LedgerEntry.seq)
        ).all()
        assert [tuple(row) for row in amounts] == [("charge", -10_000), ("refund", 10_000)]
        compensation = db.session.scalars(select(Compensation)).one()
        assert (compensation.status, compensation.amount) == ("completed", 10_000)
        assert str(compensation.id) == error["details"]["compensation_id"]
    # The outcome is stored: a replay neither calls the provider nor charges again.
    replay = send(client, person, conversation, key="empty")
    assert replay.status_code == 502 and replay.headers["Idempotent-Replayed"] == "true"
    assert len(fake_providers.calls(provider)) == 1


def test_without_enough_credits_it_is_402_and_the_provider_is_not_called(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=100_000)
    conversation = start_conversation(client, person, "openai", "gpt-test")

    response = send(client, person, conversation, "Hello there", max_tokens=100)

    assert response.status_code == 402
    error = response.get_json()["error"]
    assert error["code"] == "insufficient_credits"
    # (9 + 8 + 11 + 8) input tokens at 1000 µcr and 100 output tokens at 2000 µcr.
    assert error["details"] == {"required": "0.236", "available": "0.1"}
    assert fake_providers.calls("openai") == []
    assert counts(app) == NOTHING


def test_the_hold_is_the_worst_case_and_the_rest_is_released(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", "gpt-test")
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 5, "completion_tokens": 5}))

    send(client, person, conversation, "Hello there", max_tokens=100)

    with app.app_context():
        hold = db.session.scalars(select(Hold)).one()
        assert (hold.amount, hold.status, hold.captured) == (236_000, "settled", 15_000)
    assert fake_providers.calls("openai")[0]["body"]["max_completion_tokens"] == 100


def test_history_is_sent_and_both_messages_are_stored(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "anthropic", "claude-test")
    fake_providers.script("anthropic", Answer(text="First answer"), Answer(text="Second answer"))

    send(client, person, conversation, "First question")
    send(client, person, conversation, "Second question")

    body = fake_providers.calls("anthropic")[1]["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]
    listed = client.get(f"/api/conversations/{conversation}/messages", headers=person.headers)
    assert [m["content"] for m in listed.get_json()["items"]] == [
        "Second answer",
        "Second question",
        "First answer",
        "First question",
    ]


def test_thinking_is_not_part_of_the_reply(
    client: FlaskClient, person_factory: Any, fake_providers: FakeProviders, priced: None
) -> None:
    person: Person = person_factory(credits=CREDITS)
    for provider in ("anthropic", "google"):
        conversation = start_conversation(client, person, provider, MODELS[provider])
        fake_providers.script(provider, Answer(text="The answer.", thinking="Let me think..."))
        reply = send(client, person, conversation).get_json()["reply"]
        assert reply["content"] == "The answer."


def test_the_tier_decides_models_and_max_tokens(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    admin: Person,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", "gpt-test")
    tier = {
        "name": "narrow",
        "monthly_credits": "0",
        "allowed_models": ["anthropic:*", "google:gemini-test"],
        "default_max_tokens": 64,
        "max_max_tokens": 128,
    }
    assert client.put("/api/admin/tiers", json=tier, headers=admin.headers).status_code == 200
    moved = client.put(
        f"/api/admin/users/{person.id}/tier", json={"tier": "narrow"}, headers=admin.headers
    )
    assert moved.get_json() == {"user_id": str(person.id), "tier": "narrow"}

    refused = send(client, person, conversation)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "model_not_allowed"

    google = start_conversation(client, person, "google", "gemini-test")
    too_many = send(client, person, google, max_tokens=129)
    assert too_many.status_code == 400
    assert "max_tokens" in too_many.get_json()["error"]["details"]
    assert send(client, person, google).status_code == 201
    sent = fake_providers.calls("google")[0]["body"]
    assert sent["generationConfig"]["maxOutputTokens"] == 64
    assert sent["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert fake_providers.calls("openai") == []


def test_a_replayed_message_does_not_call_or_charge_again(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", "gpt-test")

    first = send(client, person, conversation, key="once")
    replay = send(client, person, conversation, key="once")
    other_body = send(client, person, conversation, "something else", key="once")

    assert first.status_code == replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == first.get_data()
    assert other_body.status_code == 409
    assert other_body.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake_providers.calls("openai")) == 1
    assert counts(app)["charges"] == 1


def test_the_same_key_twice_at_once_calls_the_provider_once(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person: Person = person_factory(credits=CREDITS)
    conversation = start_conversation(client, person, "openai", "gpt-test")
    fake_providers.delay = 0.5
    results: list[int] = []

    def post() -> None:
        results.append(send(app.test_client(), person, conversation, key="twin").status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [201, 409]
    assert len(fake_providers.calls("openai")) == 1
    assert counts(app)["charges"] == 1
    with app.app_context():
        assert db.session.scalars(select(IdempotencyKey.status)).all() == ["completed"]


def test_the_sdk_retries_are_bounded(fake_providers: FakeProviders) -> None:
    request = ChatRequest("gpt-test", "Be brief.", (ChatMessage("user", "Hi"),), 10)
    base_url = fake_providers.base_urls()["OPENAI_BASE_URL"]
    retrying = OpenAIProvider(Connection(base_url, "key", 2, max_retries=1))

    fake_providers.script("openai", Answer(status=500), Answer(text="Recovered"))
    assert retrying.complete(request).text == "Recovered"
    assert len(fake_providers.calls("openai")) == 2

    fake_providers.script("openai", Answer(status=503), Answer(status=503), Answer(text="late"))
    with pytest.raises(Exception, match="openai"):
        retrying.complete(request)
    assert len(fake_providers.calls("openai")) == 4


@pytest.mark.parametrize("stream", [False, True])
def test_both_messages_of_an_exchange_name_its_charge(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    stream: bool,
) -> None:
    """Streamed or not, the user message and the reply point to the call's usage record (a
    streamed user message is stored with the hold, and linked in the settle's transaction)."""
    person = person_factory(credits=10**9)
    add_price(app, "openai", "gpt-linked", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-linked")
    fake_providers.script("openai", Answer(text="Linked"))
    sent = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Hello there", "stream": stream},
        headers={**person.headers, "Idempotency-Key": f"linked-{stream}"},
    )
    assert sent.status_code == (200 if stream else 201)
    sent.get_data()
    with app.app_context():
        (usage_id,) = db.session.scalars(select(UsageRecord.id)).all()
        rows = db.session.execute(
            select(Message.role, Message.content, Message.usage_id).order_by(Message.id)
        ).all()
        db.session.remove()
    assert [tuple(row) for row in rows] == [
        ("user", "Hello there", usage_id),
        ("assistant", "Linked", usage_id),
    ]
