"""Streamed replies (`"stream": true`): Server-Sent Events from every provider through its SDK,
charged exactly as the same usage is charged without streaming, and charged for what was
delivered when the stream ends early."""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from creditapp.billing.models import UnbilledUsage, UsageRecord
from creditapp.chat.models import Message
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from creditapp.metering.estimate import estimate_tokens
from creditapp.money import format_credits, parse_credits
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    add_price,
    assert_consistent,
    database_refuses,
    run_job_at,
    scalar,
    send,
    start_conversation,
)
from tests.integration.live_server import call, live_server, retry_until_run
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_chat import MODELS, PROVIDERS, balance_of, counts

CREDITS = 100 * 1_000_000
# The provider's own counts, with cache and reasoning tokens, in each one's field names; 200
# output tokens, within the 256 a message may have by default (a provider writes no more).
USAGES = {
    "openai": {
        "prompt_tokens": 1400,
        "completion_tokens": 200,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 100},
    },
    "anthropic": {
        "input_tokens": 200,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 200,
    },
    "google": {
        "promptTokenCount": 1400,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 100,
        "thoughtsTokenCount": 100,
    },
}
# At 1 USD per 1M input tokens, 0.5 cached, 1.25 cache writes and 2 output, in credits.
CHARGES = {"openai": "1.3", "anthropic": "1.35", "google": "1.3"}
REPLY = "Streaming works, word by word, with every token counted."


def events_of(body: bytes) -> list[tuple[str, Any]]:
    """The SSE events of a body: (name, data), and ("", comment) for comments."""
    found = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            found.append(("", block[1:].strip()))
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields["event"], json.loads(fields["data"])))
    return found


@pytest.fixture
def chat(app: Flask, client: FlaskClient, person_factory: Any) -> Any:
    """`chat(provider)`: a user with 100 credits and a conversation on that provider's model."""
    for provider, model in MODELS.items():
        add_price(
            app, provider, model, input="1", output="2", cached_input="0.5", cache_write="1.25"
        )

    def start(provider: str, credits: int = CREDITS) -> tuple[Person, str]:
        user = person_factory(credits=credits)
        return user, start_conversation(client, user, provider, MODELS[provider])

    return start


def stream(client: FlaskClient, person: Person, conversation: str, **fields: Any) -> Any:
    return send(client, person, conversation, stream=True, **fields)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_streams_and_is_charged_as_without_streaming(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    provider: str,
) -> None:
    user, conversation = chat(provider)
    fake_providers.script(provider, Answer(text=REPLY, usage=USAGES[provider]))
    response = stream(client, user, conversation, content="Tell me")
    assert response.status_code == 200
    assert response.content_type == "text/event-stream; charset=utf-8"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-store"
    events = events_of(response.get_data())
    names = [name for name, _ in events]
    assert names[0] == "message" and names[-1] == "done"
    assert set(names[1:-1]) == {"delta"} and len(names) - 2 == len(REPLY.split(" "))
    message = events[0][1]
    assert (message["role"], message["content"]) == ("user", "Tell me")
    assert "".join(data["text"] for name, data in events if name == "delta") == REPLY
    done = events[-1][1]
    assert done["reply"]["content"] == REPLY and done["reply"]["partial"] is False
    assert done["message"]["id"] == message["id"]

    # The same usage, not streamed, costs the same.
    fake_providers.script(provider, Answer(text=REPLY, usage=USAGES[provider]))
    whole = send(client, user, conversation, content="Tell me").get_json()
    assert done["usage"] == whole["usage"]
    assert done["usage"]["cached_tokens"] == 1000 and not done["usage"]["estimated"]
    assert done["credits_charged"] == whole["credits_charged"] == CHARGES[provider]
    spent = 2 * parse_credits(CHARGES[provider])
    assert balance_of(client, user)["balance"] == format_credits(CREDITS - spent)
    assert counts(app)["pending_holds"] == 0
    assert_consistent(app)


def usage_records(app: Flask) -> list[UsageRecord]:
    with app.app_context():
        records = list(db.session.scalars(select(UsageRecord).order_by(UsageRecord.id)))
        db.session.expunge_all()
        return records


def replies(app: Flask) -> list[Message]:
    with app.app_context():
        found = list(
            db.session.scalars(
                select(Message).where(Message.role == "assistant").order_by(Message.id)
            )
        )
        db.session.expunge_all()
        return found


def test_a_stream_without_usage_is_estimated(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(text=REPLY, usage=None))
    events = events_of(stream(client, user, conversation).get_data())
    done = events[-1][1]
    assert events[-1][0] == "done" and done["usage"]["estimated"] is True
    (record,) = usage_records(app)
    assert (record.estimated, record.ending) == (True, "completed")
    assert record.credits_charged == parse_credits(done["credits_charged"]) > 0
    assert counts(app)["pending_holds"] == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_failing_mid_stream_is_charged_for_what_was_delivered(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    provider: str,
) -> None:
    user, conversation = chat(provider)
    fake_providers.script(provider, Answer(text=REPLY, usage=USAGES[provider], fail_after=3))
    events = events_of(stream(client, user, conversation).get_data())
    assert [name for name, _ in events] == ["message", "delta", "delta", "delta", "error"]
    error = events[-1][1]
    assert (error["error"]["code"], error["error"]["message"]) == (
        "provider_error",
        "The AI provider failed during the reply: what it delivered is charged.",
    )
    delivered = "".join(data["text"] for name, data in events if name == "delta")
    assert delivered == " ".join(REPLY.split(" ")[:3])
    (record,) = usage_records(app)
    assert record.ending == "provider_failed"
    assert record.credits_charged == parse_credits(error["credits_charged"]) > 0
    (reply,) = replies(app)
    assert (reply.content, reply.partial) == (delivered, True)
    assert balance_of(client, user)["reserved"] == "0"
    assert_consistent(app)


# Usage under the hold (which caps what a stream cut short is charged): 60 input tokens, 40
# cached and 30 output, 0.14 credits at the prices of `chat`.
SMALL_USAGES = {
    "openai": {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 40},
    },
    "anthropic": {"input_tokens": 60, "cache_read_input_tokens": 40, "output_tokens": 30},
    "google": {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 30},
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_ends_without_its_terminal_event_is_a_provider_failure(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    provider: str,
) -> None:
    """Every word came, then the body ended without the event that says the reply is complete
    (a connection cut between events): the reply may be unfinished, so it is not `done`."""
    user, conversation = chat(provider)
    fake_providers.script(
        provider, Answer(text=REPLY, usage=SMALL_USAGES[provider], unterminated=True)
    )
    events = events_of(stream(client, user, conversation).get_data())
    names = [name for name, _ in events]
    assert names == ["message", *["delta"] * len(REPLY.split(" ")), "error"]
    error = events[-1][1]
    assert (error["error"]["code"], error["error"]["details"]) == (
        "provider_error",
        {"provider": provider, "reason": "stream ended before its terminal event"},
    )
    # Every word was delivered, and the provider had counted them: charged as it reported.
    assert error["credits_charged"] == "0.14"
    (record,) = usage_records(app)
    assert (record.ending, record.estimated) == ("provider_failed", False)
    assert (record.input_tokens, record.cached_tokens, record.output_tokens) == (100, 40, 30)
    assert record.credits_charged == record.cost == parse_credits("0.14")
    (reply,) = replies(app)
    assert (reply.content, reply.partial) == (REPLY, True)
    left = {"balance": "99.86", "reserved": "0", "available": "99.86"}
    assert balance_of(client, user) == error["balance"] == left
    assert_consistent(app)


def test_a_provider_failing_before_any_word_charges_and_keeps_nothing(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("anthropic")
    fake_providers.script("anthropic", Answer(text=REPLY, fail_after=0))
    key = secrets.token_hex(8)
    events = events_of(stream(client, user, conversation, key=key).get_data())
    assert [name for name, _ in events] == ["message", "error"]
    assert events[-1][1]["credits_charged"] == "0"
    assert counts(app) == {"messages": 0, "usage": 0, "charges": 0, "pending_holds": 0}
    assert balance_of(client, user)["balance"] == "100"
    # Nothing durable happened: the key is free, and a retry runs again.
    fake_providers.script("anthropic", Answer(text=REPLY))
    retried = events_of(stream(client, user, conversation, key=key).get_data())
    assert retried[-1][0] == "done"


def test_an_unreachable_provider_is_a_json_502_before_any_stream(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(status=500))
    response = stream(client, user, conversation)
    assert response.status_code == 502 and response.is_json
    assert counts(app) == {"messages": 0, "usage": 0, "charges": 0, "pending_holds": 0}


def test_refusals_before_the_stream_are_json(app: Flask, client: FlaskClient, chat: Any) -> None:
    poor, conversation = chat("openai", credits=1)
    response = stream(client, poor, conversation)
    assert (response.status_code, response.get_json()["error"]["code"]) == (
        402,
        "insufficient_credits",
    )
    response = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "hi", "stream": "yes"},
        headers={**poor.headers, "Idempotency-Key": "k"},
    )
    assert response.status_code == 400 and "stream" in response.get_json()["error"]["details"]


def test_the_same_key_replays_the_stream_in_three_events(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("google")
    fake_providers.script("google", Answer(text=REPLY, usage=USAGES["google"]))
    first = events_of(stream(client, user, conversation, key="stream-1").get_data())
    again = stream(client, user, conversation, key="stream-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    replayed = events_of(again.get_data())
    assert [name for name, _ in replayed] == ["message", "delta", "done"]
    assert replayed[1][1] == {"text": REPLY}
    assert replayed[0][1] == first[0][1] and replayed[-1][1] == first[-1][1]
    assert len(fake_providers.calls("google")) == 1 and counts(app)["charges"] == 1


STREAM_BODY = json.dumps({"content": "Tell me a long story", "stream": True})


@contextmanager
def _open_stream(
    base: str, person: Person, conversation: str, key: str | None = None
) -> Iterator[http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    connection.request(
        "POST",
        f"/api/conversations/{conversation}/messages",
        body=STREAM_BODY,
        headers={
            **person.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": key or secrets.token_hex(8),
        },
    )
    try:
        response = connection.getresponse()
        assert response.status == 200, response.read()
        yield response
    finally:
        connection.close()  # mid-stream, this is the client going away


def _next_event(response: http.client.HTTPResponse) -> tuple[str, Any]:
    lines = []
    while (line := response.readline()) not in (b"\n", b""):
        lines.append(line.decode().rstrip("\n"))
    (event,) = events_of(("\n".join(lines) + "\n\n").encode())
    return event


def _wait_for(check: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


@pytest.mark.real_clock
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_client_that_disconnects_pays_for_what_it_was_sent(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    provider: str,
) -> None:
    user, conversation = chat(provider)
    long_reply = " ".join(f"word{index}" for index in range(400))
    # Usage counted as each provider reports it: OpenAI's at the end only, Anthropic's input at
    # the start, Gemini's on every chunk.
    fake_providers.script(provider, Answer(text=long_reply, piece_delay=0.02))
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}, threads=4) as base:
        with _open_stream(base, user, conversation) as response:
            assert _next_event(response)[0] == "message"
            received = [_next_event(response) for _ in range(3)]
            assert [name for name, _ in received] == ["delta"] * 3
        _wait_for(lambda: bool(usage_records(app)))
        # The provider's stream is closed early, not read to its end.
        _wait_for(lambda: fake_providers.streams[0].client_closed)
    (record,) = usage_records(app)
    (reply,) = replies(app)
    assert fake_providers.streams[0].sent < 400
    assert reply.partial and reply.content.startswith("word0 word1 word2")
    assert len(reply.content.split(" ")) < 400
    assert record.ending == "client_closed"
    # The input as the provider reported it (else estimated), and the output delivered:
    # estimated from its text, unless the provider counted more (Gemini, as it goes).
    (sent,) = fake_providers.calls(provider)
    prompt = sent["body"].get("messages") or sent["body"].get("contents")
    counted_input = len(json.dumps(prompt).encode()) // 4 + 1
    delivered = estimate_tokens([reply.content])
    if provider == "openai":
        assert record.input_tokens == estimate_tokens(["Be brief.", "Tell me a long story"])
        assert (record.output_tokens, record.estimated) == (delivered, True)
    elif provider == "anthropic":
        assert record.input_tokens == counted_input
        assert (record.output_tokens, record.estimated) == (delivered, True)
    else:
        assert record.input_tokens == counted_input
        assert record.output_tokens >= delivered
    assert record.credits_charged == record.cost
    assert balance_of(client, user)["reserved"] == "0"
    assert balance_of(client, user)["balance"] == format_credits(CREDITS - record.cost)
    assert_consistent(app)
    reconciled = run_job_at(app, "reconcile", utcnow())
    assert (reconciled["drift"], reconciled["unbilled_calls"]) == (0, 0)


@pytest.mark.real_clock
def test_a_stream_closed_before_its_first_word_replays_as_closed_not_refunded(
    app: Flask, client: FlaskClient, fake_providers: FakeProviders, chat: Any
) -> None:
    """Its input is charged (the provider was asked) and nothing is refunded: the replay must
    not say the provider gave no reply and the charge is refunded."""
    user, conversation = chat("openai")
    # The close is seen at the second keep-alive written after it, long before the first word.
    fake_providers.script("openai", Answer(text="late words", piece_delay=10))
    key = secrets.token_hex(8)
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "STREAM_KEEPALIVE_SECONDS": "1",
        "PROVIDER_TIMEOUT_SECONDS": "30",
    }
    with live_server(env, threads=4) as base:
        with _open_stream(base, user, conversation, key) as response:
            assert _next_event(response)[0] == "message"
            response.close()  # its socket is the connection's: both are closed
        _wait_for(lambda: bool(usage_records(app)))
    (record,) = usage_records(app)
    assert record.ending == "client_closed" and record.credits_charged > 0
    replayed = client.post(
        f"/api/conversations/{conversation}/messages",
        data=STREAM_BODY,
        content_type="application/json",
        headers={**user.headers, "Idempotency-Key": key},
    )
    assert replayed.headers["Idempotent-Replayed"] == "true"
    events = events_of(replayed.get_data())
    assert [name for name, _ in events] == ["message", "error"]
    closed = events[1][1]
    assert closed["error"]["code"] == "stream_closed"
    assert closed["credits_charged"] == format_credits(record.credits_charged)
    assert replies(app) == []


@pytest.mark.real_clock
def test_fifty_streams_at_once_each_charged_exactly(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("openai")
    streams = 50
    fake_providers.script(
        "openai",
        *(Answer(text=REPLY, usage=USAGES["openai"], piece_delay=0.05) for _ in range(streams)),
    )
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "RATELIMIT_ENABLED": "false",
        # Fifty streams opening at once on a busy machine: a second may not be enough.
        "PROVIDER_TIMEOUT_SECONDS": "20",
    }
    with live_server(env, threads=streams + 10) as base:

        def one(_index: int) -> list[tuple[str, Any]]:
            with _open_stream(base, user, conversation) as response:
                return events_of(response.read())

        with ThreadPoolExecutor(streams) as pool:
            results = list(pool.map(one, range(streams)))
            # Meanwhile reads are served (the streams do not hold every thread).
            assert call("GET", f"{base}/api/credit/balance", user.token)[0] == 200
    for events in results:
        assert events[-1][0] == "done"
        assert events[-1][1]["credits_charged"] == CHARGES["openai"]
        assert "".join(data["text"] for name, data in events if name == "delta") == REPLY
    spent = streams * parse_credits(CHARGES["openai"])
    assert balance_of(client, user) == {
        "balance": format_credits(CREDITS - spent),
        "reserved": "0",
        "available": format_credits(CREDITS - spent),
    }
    assert_consistent(app)


def test_the_same_key_while_the_stream_runs_is_in_progress(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    running = stream(client, user, conversation, key="stream-2")  # opened, not read yet
    refused = stream(client, user, conversation, key="stream-2")
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (
        409,
        "request_in_progress",
    )
    assert events_of(running.get_data())[-1][0] == "done"
    replayed = stream(client, user, conversation, key="stream-2")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert len(fake_providers.calls("openai")) == 1


def test_a_stream_read_slower_than_its_hold_lives_is_settled_by_its_deadline(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that takes the first word and then reads nothing for longer than the hold
    lives: the stream is settled by its deadline (a tenth of the hold's life before it
    expires) for what it delivered, so the expiry job finds nothing to expire and a retry with
    the same key replays the charge; it does not call the provider a second time. The slow
    client, reading on, gets the rest of its stream as `stream_timed_out`."""
    monkeypatch.setitem(app.config, "HOLD_TTL_SECONDS", 2)
    monkeypatch.setitem(app.config, "STREAM_DEADLINE_SECONDS", 1.8)
    monkeypatch.setitem(app.config, "IDEMPOTENCY_TAKEOVER", timedelta(seconds=2))
    user, conversation = chat("openai")
    fake_providers.script("openai", *(Answer(text=REPLY, usage=USAGES["openai"]) for _ in range(2)))
    started = time.monotonic()
    running = stream(client, user, conversation, key="slow-reader")
    events = iter(running.response)
    assert [name for name, _ in events_of(next(events) + next(events))] == ["message", "delta"]
    _wait_for(lambda: bool(usage_records(app)))  # settled while the client reads nothing
    time.sleep(max(0.0, started + 2.5 - time.monotonic()))  # the hold's life is over
    assert run_job_at(app, "expire-holds", utcnow())["expired"] == 0
    retried = stream(client, user, conversation, key="slow-reader")
    rest = events_of(b"".join(events))

    (record,) = usage_records(app)
    assert record.ending == "timed_out"
    # The provider's counts (larger than the word delivered: it had sent them all), within
    # the hold, as for any stream cut short.
    with app.app_context():
        held = db.session.scalars(select(Hold.amount)).one()
        db.session.remove()
    assert record.credits_charged == min(record.cost, held)
    (reply,) = replies(app)
    assert reply.partial and reply.content == REPLY.split(" ")[0]
    assert [name for name, _ in rest] == ["error"]
    timed_out = rest[0][1]
    assert (timed_out["error"]["code"], timed_out["credits_charged"]) == (
        "stream_timed_out",
        format_credits(record.credits_charged),
    )
    assert retried.headers["Idempotent-Replayed"] == "true"
    replayed = events_of(retried.get_data())
    assert [name for name, _ in replayed] == ["message", "delta", "error"]
    assert replayed[1][1]["text"] == reply.content
    # As the slow client heard it (the request id aside: in the test client the retry ran
    # while the slow stream's request was still open, in the same thread).
    for ending in (replayed[2][1], timed_out):
        ending["error"].pop("request_id")
    assert replayed[2][1] == timed_out
    assert len(fake_providers.calls("openai")) == 1
    assert holds(app) == [("settled", record.credits_charged)]
    assert balance_of(client, user)["balance"] == format_credits(CREDITS - record.credits_charged)
    assert_consistent(app)


def test_a_silent_provider_gets_keep_alive_comments(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(app.config, "STREAM_KEEPALIVE_SECONDS", 0.1)
    user, conversation = chat("google")
    fake_providers.script("google", Answer(text="slow words", piece_delay=0.35))
    events = events_of(stream(client, user, conversation).get_data())
    names = [name for name, _ in events]
    assert names[0] == "message" and names[-1] == "done"
    assert names.index("") < names.index("delta")  # a comment before the first word
    assert {data for name, data in events if name == ""} == {"keep-alive"}
    assert "".join(data["text"] for name, data in events if name == "delta") == "slow words"


def test_a_settle_that_fails_charges_and_keeps_nothing_but_the_unbilled_call(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    with database_refuses(app, "messages", "NEW.role = 'assistant'"):
        events = events_of(stream(client, user, conversation, key="stream-3").get_data())
    name, error = events[-1]
    assert (name, error["error"]["code"], error["credits_charged"]) == (
        "error",
        "service_unavailable",
        "0",
    )
    assert counts(app) == {"messages": 0, "usage": 0, "charges": 0, "pending_holds": 0}
    assert balance_of(client, user)["balance"] == "100"
    with app.app_context():
        (unbilled,) = db.session.scalars(select(UnbilledUsage)).all()
        assert (unbilled.ending, unbilled.cost) == ("completed", 1_300_000)
        db.session.remove()
    # The key is free again: the retry runs, and is charged.
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    retried = events_of(stream(client, user, conversation, key="stream-3").get_data())
    assert retried[-1][0] == "done" and retried[-1][1]["credits_charged"] == "1.3"


@pytest.mark.postgres_only
@pytest.mark.real_clock
def test_a_stream_whose_settle_lost_the_database_frees_its_key_and_message_once_it_is_back(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
) -> None:
    """As without streaming: the stream ends with `error` 503, and once the database is back
    the key is free within seconds (not after the takeover time) and the user message stored
    when the stream opened is gone with it, so the client's retry runs on a clean slate."""
    user, conversation = chat("openai")
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"])
    env = {
        "DATABASE_URL": proxy.url,
        # The provider is held back while the database is cut: the call must outlast that.
        "PROVIDER_TIMEOUT_SECONDS": "30",
    }
    gate = threading.Event()
    usage = {"prompt_tokens": 30, "completion_tokens": 20}  # 0.07 credits
    fake_providers.script(
        "openai", Answer(text="Held back.", usage=usage, gate=gate), Answer(usage=usage)
    )
    url = f"/api/conversations/{conversation}/messages"
    body = json.dumps({"content": "Hello", "max_tokens": 20, "stream": True}).encode()
    key = {"Idempotency-Key": "cut-stream"}
    try:
        with live_server(env, threads=4) as base, ThreadPoolExecutor(max_workers=1) as pool:
            streaming = pool.submit(call, "POST", f"{base}{url}", user.token, body, key)
            _wait_for(lambda: bool(fake_providers.calls("openai")))
            proxy.cut()  # after the hold and the user message, before the settle
            gate.set()
            status, _headers, answer = streaming.result(timeout=60)
            assert status == 200, answer
            events = events_of(answer)
            assert [name for name, _ in events] == ["message", "delta", "delta", "error"]
            error = events[-1][1]
            assert (error["error"]["code"], error["credits_charged"]) == (
                "service_unavailable",
                "0",
            )
            time.sleep(2)
            proxy.restore()
            status, headers, answer = retry_until_run(
                "POST", f"{base}{url}", user.token, body, key, ran=200
            )
            assert status == 200, answer
    finally:
        proxy.close()
    assert "Idempotent-Replayed" not in headers  # it ran: nothing was stored before
    retried = events_of(answer)
    assert retried[-1][0] == "done" and retried[-1][1]["credits_charged"] == "0.07"
    assert len(fake_providers.calls("openai")) == 2
    # One exchange in the conversation: the first stream's user message went with its key.
    with app.app_context():
        kept = db.session.execute(
            select(Message.role, Message.content, Message.partial).order_by(Message.id)
        ).all()
        db.session.remove()
    assert [tuple(row) for row in kept] == [
        ("user", "Hello", False),
        ("assistant", retried[-1][1]["reply"]["content"], False),
    ]
    # The first hold waits for the expiry job, as without streaming (voiding it, and keeping
    # the call as unbilled, failed with the database: the log line `settle_failed` keeps it).
    assert holds(app) == [("pending", None), ("settled", 70_000)]
    run_job_at(app, "expire-holds", utcnow() + timedelta(seconds=app.config["HOLD_TTL_SECONDS"]))
    assert holds(app) == [("expired", 0), ("settled", 70_000)]
    assert balance_of(client, user) == {
        "balance": "99.93",
        "reserved": "0",
        "available": "99.93",
    }
    assert scalar(app, select(func.count()).select_from(UnbilledUsage)) == 0
    assert_consistent(app)


def holds(app: Flask) -> list[tuple[str, int | None]]:
    """Every hold as (status, captured), oldest first."""
    with app.app_context():
        rows = db.session.execute(select(Hold.status, Hold.captured).order_by(Hold.id)).all()
        db.session.remove()
    return [(row[0], row[1]) for row in rows]


def test_an_empty_streamed_reply_is_charged_then_refunded_as_without_streaming(
    app: Flask, client: FlaskClient, fake_providers: FakeProviders, chat: Any
) -> None:
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(text="", usage=USAGES["openai"]))
    events = events_of(stream(client, user, conversation).get_data())
    assert [name for name, _ in events] == ["message", "error"]
    error = events[-1][1]
    assert error["error"]["code"] == "provider_error"
    assert error["error"]["details"]["credits_charged"] == CHARGES["openai"]
    assert "compensation_id" in error["error"]["details"]
    assert error["balance"]["balance"] == "100"  # refunded at once
    assert balance_of(client, user)["balance"] == "100"
    assert_consistent(app)


@pytest.mark.real_clock
def test_a_streams_provider_duration_is_the_providers_time_not_its_readers(
    client: FlaskClient, fake_providers: FakeProviders, chat: Any
) -> None:
    """The provider's latency histogram measures the provider: a client that reads its stream
    slowly (or keeps it open) does not make the provider look slow."""
    user, conversation = chat("openai")
    fake_providers.script("openai", Answer(text=REPLY))
    labels = {"provider": "openai", "model": MODELS["openai"]}

    def observed() -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            REGISTRY.get_sample_value(f"creditapp_provider_request_duration_seconds_{part}", labels)
            or 0.0
            for part in ("count", "sum")
        )

    count, total = observed()
    response = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Hello", "stream": True},
        headers={**user.headers, "Idempotency-Key": secrets.token_hex(8)},
        buffered=False,
    )
    assert response.status_code == 200
    chunks = iter(response.response)
    read = b""
    while b"event: delta" not in read:
        read += next(chunks)
    time.sleep(2)  # a slow reader, from the first word on
    body = read + b"".join(chunks)
    assert events_of(body)[-1][0] == "done"
    after_count, after_total = observed()
    assert after_count == count + 1
    assert after_total - total < 1


@pytest.mark.parametrize("streamed", [False, True])
def test_a_gemini_reply_cut_at_its_per_request_limit_is_one_request_charged_once(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    chat: Any,
    streamed: bool,
) -> None:
    """Gemini's CONTINUATION: what the one request said is what is charged, as Google bills
    it; no second request reads the prompt again behind the hold's back."""
    user, conversation = chat("google")
    fake_providers.script("google", Answer(text=REPLY, usage=USAGES["google"], continued=True))
    sent = send(client, user, conversation, content="Tell me", stream=streamed)
    assert sent.status_code == (200 if streamed else 201), sent.get_data()
    if streamed:
        assert events_of(sent.get_data())[-1][0] == "done"
    (call,) = fake_providers.calls("google")
    # The setting is the SDK's own: Gemini refuses a field it does not know.
    assert "ontinuation" not in json.dumps(call["body"])
    (record,) = usage_records(app)
    assert (record.input_tokens, record.cached_tokens) == (1400, 1000)
    assert record.credits_charged == parse_credits(CHARGES["google"])
    assert_consistent(app)
