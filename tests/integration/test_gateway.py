"""The OpenAI-compatible gateway proved with OpenAI's own SDK and with LangChain against a real
gunicorn: every provider whole and streamed, charged exactly as the chat endpoint charges the
same usage (the SDK's `usage.credits` = `X-Credits-Charged` = the ledger), the request reaching
each provider as it was asked, a stream abandoned by its client, the models a key may call, a
call's receipt, and an Idempotency-Key's replay."""

from __future__ import annotations

import functools
import json
import operator
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient
from langchain_openai import ChatOpenAI
from sqlalchemy import func, select

from creditapp.api.gateway import CREDIT_HEADERS
from creditapp.auth.models import ApiKey
from creditapp.extensions import db
from creditapp.ledger.models import Account, Hold, SpendCap
from creditapp.money import format_credits, parse_credits
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_consistent, scalar, send, start_conversation
from tests.integration.gateway_client import (
    OpenAIClients,
    add_tier,
    charge_count,
    charged,
    hold_of,
    make_key,
    refused,
)
from tests.integration.live_server import ServerUrl, live_server

pytestmark = pytest.mark.real_clock

CREDITS = 100 * 1_000_000
MODELS = {"demo": "echo", "openai": "gpt-test", "anthropic": "claude-test", "google": "gemini-test"}
SDK_PROVIDERS = ["openai", "anthropic", "google"]
REPLY = "Through the gateway, word by word, with every token counted."
# Each provider's own counts, with cached, cache-write and reasoning tokens where its wire
# format has them; 200 output tokens, within the 256 a call may have by default (a provider
# writes no more).
USAGES: dict[str, dict[str, Any]] = {
    "openai": {
        "prompt_tokens": 1400,
        "completion_tokens": 200,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 100},
    },
    "anthropic": {
        "input_tokens": 200,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 200,
        "output_tokens_details": {"thinking_tokens": 100},
    },
    "google": {
        "promptTokenCount": 1400,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 100,
        "thoughtsTokenCount": 100,
    },
}
# Anthropic's `message_start` reports the usage so far (one output token), and the fake repeats
# the scripted usage there: thinking tokens would outnumber that token, so a stream is scripted
# without them.
STREAMED_USAGES = {
    **USAGES,
    "anthropic": {
        name: count
        for name, count in USAGES["anthropic"].items()
        if name != "output_tokens_details"
    },
}
# (prompt, cached, cache write, completion, reasoning) as OpenAI's usage says them.
TOKENS = {
    "openai": (1400, 1000, 100, 200, 100),
    "anthropic": (1400, 1000, 200, 200, 100),
    "google": (1400, 1000, 0, 200, 100),
}
# At 1 USD per 1M input tokens, 0.5 cached, 1.25 cache writes and 2 output, in credits.
CHARGES = {"openai": "1.325", "anthropic": "1.35", "google": "1.3"}
SYSTEM = "Be brief."
# More than the scripted replies' output, so that they finish with "stop".
MAX_TOKENS = 1000


@pytest.fixture(scope="module")
def server(app: Flask) -> Iterator[ServerUrl]:
    """One gunicorn for the module (it reads the same database and calls the same fakes)."""
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}, threads=4) as base:
        yield base


@pytest.fixture
def priced(app: Flask) -> None:
    for provider, model in MODELS.items():
        add_price(
            app, provider, model, input="1", output="2", cached_input="0.5", cache_write="1.25"
        )


@pytest.fixture
def sdk() -> Iterator[OpenAIClients]:
    with OpenAIClients() as clients:
        yield clients


@pytest.fixture
def caller(client: FlaskClient, person_factory: Any, priced: None) -> Callable[..., Any]:
    """`caller(credits=..., **key_fields)`: a person with credits and an API key of theirs."""

    def make(credits: int = CREDITS, **key_fields: Any) -> tuple[Person, str]:
        person = person_factory(credits=credits)
        return person, make_key(client, person, **key_fields)[1]

    return make


def balance_of(client: FlaskClient, person: Person) -> dict[str, str]:
    answer = client.get("/api/credit/balance", headers=person.headers).get_json()
    return {name: answer[name] for name in ("balance", "reserved", "available")}


def chat_charge(
    client: FlaskClient,
    fake: FakeProviders,
    person: Person,
    provider: str,
    content: str,
    usages: dict[str, dict[str, Any]] = USAGES,
) -> str:
    """What the chat message endpoint charges for the same call (the same scripted usage)."""
    if provider != "demo":
        fake.script(provider, Answer(text=REPLY, usage=usages[provider]))
    conversation = start_conversation(client, person, provider, MODELS[provider])
    sent = send(client, person, conversation, content)
    assert sent.status_code == 201, sent.get_json()
    charged: str = sent.get_json()["credits_charged"]
    return charged


def messages(content: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def assert_usage(usage: Any, provider: str, *, thinking_reported: bool = True) -> None:
    """OpenAI's usage as the SDK parsed it, with our `credits` and `estimated` beside it."""
    assert usage.model_extra == {"credits": usage.model_extra["credits"], "estimated": False}
    if provider == "demo":
        return
    prompt, cached, written, completion, reasoning = TOKENS[provider]
    reasoning = reasoning if thinking_reported else 0
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion
    assert usage.prompt_tokens_details.cached_tokens == cached
    assert usage.prompt_tokens_details.cache_write_tokens == written
    assert usage.completion_tokens_details.reasoning_tokens == reasoning
    assert usage.model_extra["credits"] == CHARGES[provider]


@pytest.mark.parametrize("provider", list(MODELS))
def test_each_provider_whole_is_charged_as_the_chat_endpoint_charges(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
    provider: str,
) -> None:
    person, key = caller()
    if provider != "demo":
        fake_providers.script(provider, Answer(text=REPLY, usage=USAGES[provider]))
    raw = sdk(server, key).chat.completions.with_raw_response.create(
        model=f"{provider}/{MODELS[provider]}", messages=messages(), max_tokens=MAX_TOKENS
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == f"{provider}/{MODELS[provider]}"
    (choice,) = completion.choices
    assert (choice.message.role, choice.finish_reason) == ("assistant", "stop")
    if provider != "demo":
        assert choice.message.content == REPLY
    else:
        assert choice.message.content.endswith("You said: Hello there")
    assert_usage(completion.usage, provider)
    credits = completion.usage.model_extra["credits"]
    assert raw.headers["X-Credits-Charged"] == credits
    assert charged(app, hold_of(completion.id)) == parse_credits(credits) > 0
    held = parse_credits(raw.headers["X-Credits-Held"])
    assert held >= parse_credits(credits)
    after = balance_of(client, person)
    assert raw.headers["X-Credits-Available"] == after["available"]
    assert after == {
        "balance": format_credits(CREDITS - parse_credits(credits)),
        "reserved": "0",
        "available": format_credits(CREDITS - parse_credits(credits)),
    }
    assert chat_charge(client, fake_providers, person, provider, "Hello there") == credits
    assert_consistent(app)


def test_each_provider_streamed_is_charged_as_the_chat_endpoint_charges(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
) -> None:
    for provider, model in MODELS.items():
        person, key = caller()
        if provider != "demo":
            fake_providers.script(provider, Answer(text=REPLY, usage=STREAMED_USAGES[provider]))
        raw = sdk(server, key).chat.completions.with_raw_response.create(
            model=f"{provider}/{model}",
            messages=messages("Hi"),
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": False},
        )
        held = parse_credits(raw.headers["X-Credits-Held"])
        assert raw.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        chunks = list(raw.parse())
        ids = {chunk.id for chunk in chunks}
        assert len(ids) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        if provider != "demo":
            assert text == REPLY
        else:
            assert text.endswith("You said: Hi")
        # The last chunk carries the usage though the client said it did not want it; the
        # one before it says how the reply finished.
        *_, finished, last = chunks
        assert finished.choices[0].finish_reason == "stop"
        assert last.choices == [] and last.usage is not None
        assert all(chunk.usage is None for chunk in chunks[:-1])
        assert_usage(last.usage, provider, thinking_reported=provider != "anthropic")
        credits = last.usage.model_extra["credits"]
        assert charged(app, hold_of(last.id)) == parse_credits(credits) > 0
        assert held >= parse_credits(credits)
        assert balance_of(client, person)["available"] == format_credits(
            CREDITS - parse_credits(credits)
        )
        assert (
            chat_charge(client, fake_providers, person, provider, "Hi", STREAMED_USAGES) == credits
        )
    assert_consistent(app)


@pytest.mark.parametrize("provider", SDK_PROVIDERS)
def test_the_request_reaches_the_provider_as_asked(
    fake_providers: FakeProviders, server: ServerUrl, sdk: OpenAIClients, caller: Any, provider: str
) -> None:
    _person, key = caller()
    sdk(server, key).chat.completions.create(
        model=f"{provider}/{MODELS[provider]}",
        messages=[
            {"role": "system", "content": "Rule one."},
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}]},
            {"role": "assistant", "content": "Yes?"},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "tell "}, {"type": "text", "text": "me."}],
            },
        ],
        stop=["END", "STOP"],
        max_tokens=50,
        max_completion_tokens=40,
        temperature=0.5,
        top_p=0.25,
    )
    (sent,) = fake_providers.calls(provider)
    body = sent["body"]
    system = "Rule one.\n\nRule two."
    conversation = [("user", "Hello, "), ("assistant", "Yes?"), ("user", "tell me.")]
    if provider == "openai":
        assert body["messages"] == [
            {"role": "system", "content": system},
            *({"role": role, "content": text} for role, text in conversation),
        ]
        assert body["max_completion_tokens"] == 40 and "max_tokens" not in body
        assert (body["stop"], body["temperature"], body["top_p"]) == (["END", "STOP"], 0.5, 0.25)
    elif provider == "anthropic":
        assert body["system"] == system
        assert body["messages"] == [{"role": r, "content": t} for r, t in conversation]
        assert (body["max_tokens"], body["stop_sequences"]) == (40, ["END", "STOP"])
        assert (body["temperature"], body["top_p"]) == (0.5, 0.25)
    else:
        assert body["systemInstruction"]["parts"] == [{"text": system}]
        roles = {"user": "user", "assistant": "model"}
        assert body["contents"] == [
            {"role": roles[r], "parts": [{"text": t}]} for r, t in conversation
        ]
        config = body["generationConfig"]
        assert (config["maxOutputTokens"], config["stopSequences"]) == (40, ["END", "STOP"])
        assert (config["temperature"], config["topP"]) == (0.5, 0.25)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", SDK_PROVIDERS)
def test_a_request_without_a_system_message_sends_none(
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
    provider: str,
    stream: bool,
) -> None:
    """Most callers send no system message, some a blank one: the provider gets no system
    text at all (Gemini refuses an empty one)."""
    _person, key = caller()
    for asked in ([], [{"role": "system", "content": " "}]):
        fake_providers.reset()
        answer = sdk(server, key).chat.completions.create(
            model=f"{provider}/{MODELS[provider]}",
            messages=[*asked, {"role": "user", "content": "Hello"}],
            stream=stream,
        )
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        else:
            assert answer.choices[0].message.content
        (sent,) = fake_providers.calls(provider)
        body = sent["body"]
        if provider == "openai":
            assert body["messages"] == [{"role": "user", "content": "Hello"}]
        else:
            assert not {"system", "systemInstruction"} & set(body)


@pytest.mark.parametrize("content", ["", " \n", [], [{"type": "text", "text": "\u200b"}]])
@pytest.mark.parametrize("role", ["user", "assistant"])
def test_a_message_of_no_text_is_refused_before_any_hold(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
    role: str,
    content: Any,
) -> None:
    person, key = caller()
    conversation = [{"role": "user", "content": "Hello"}, {"role": role, "content": content}]
    with pytest.raises(openai.BadRequestError) as failed:
        sdk(server, key).chat.completions.create(
            model="anthropic/claude-test", messages=conversation
        )
    body = refused(failed.value, 400, "validation_error")
    assert (body["type"], body["param"]) == ("invalid_request_error", "messages")
    assert "Must contain more than spaces" in body["message"]
    assert fake_providers.calls("anthropic") == []
    assert balance_of(client, person)["balance"] == format_credits(CREDITS)
    assert scalar(app, select(func.count()).select_from(Hold)) == 0


def test_max_tokens_alone_is_the_output_allowed(
    fake_providers: FakeProviders, server: ServerUrl, sdk: OpenAIClients, caller: Any
) -> None:
    _person, key = caller()
    sdk(server, key).chat.completions.create(
        model="openai/gpt-test", messages=messages(), max_tokens=77
    )
    (sent,) = fake_providers.calls("openai")
    assert sent["body"]["max_completion_tokens"] == 77
    assert "temperature" not in sent["body"] and "stop" not in sent["body"]


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.05)


# A long reply's usage, had it been read to its end.
LONG_USAGES = {
    "openai": {"prompt_tokens": 20, "completion_tokens": 900},
    "anthropic": {"input_tokens": 20, "output_tokens": 900},
    "google": {"promptTokenCount": 20, "candidatesTokenCount": 900},
}


@pytest.mark.parametrize("provider", SDK_PROVIDERS)
def test_an_abandoned_stream_is_charged_for_what_was_delivered_and_releases_everything(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
    provider: str,
) -> None:
    person, key = caller(limit="50")
    long_reply = " ".join(f"word{index}" for index in range(300))
    fake_providers.script(
        provider, Answer(text=long_reply, usage=LONG_USAGES[provider], piece_delay=0.05)
    )
    raw = sdk(server, key).chat.completions.with_raw_response.create(
        model=f"{provider}/{MODELS[provider]}", messages=messages(), stream=True, max_tokens=1000
    )
    held = parse_credits(raw.headers["X-Credits-Held"])
    stream = raw.parse()
    received = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 4:  # the role, then three words
            break
    stream.close()
    hold_id = hold_of(received[0].id)
    wait_for(lambda: scalar(app, select(Hold.status).where(Hold.id == hold_id)) != "pending")
    wait_for(lambda: fake_providers.streams[0].client_closed)
    assert fake_providers.streams[0].sent < 300
    delivered = charged(app, hold_id)
    full_cost = 20 * 1_000 + 900 * 2_000  # µcr at 1 and 2 USD per 1M tokens
    assert 0 < delivered < full_cost and delivered <= held
    assert scalar(app, select(Hold.status).where(Hold.id == hold_id)) == "settled"
    assert scalar(app, select(Account.reserved).where(Account.id == person.account_id)) == 0
    cap = select(SpendCap.reserved, SpendCap.spent).join(ApiKey, ApiKey.cap_id == SpendCap.id)
    with app.app_context():
        (reserved, spent), *_ = db.session.execute(cap).all()
        db.session.remove()
    assert (reserved, spent) == (0, delivered)
    assert balance_of(client, person)["balance"] == format_credits(CREDITS - delivered)
    assert_consistent(app)


def _sse_data(body: bytes) -> list[Any]:
    """The `data:` payloads of a gateway stream's body, JSON decoded (`[DONE]` as is)."""
    found: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


def test_a_stream_read_slower_than_its_hold_lives_ends_by_its_deadline(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    caller: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the chat endpoint's: settled by its deadline for what it delivered, before its hold
    expires and its key may be taken over; the slow client then reads the usage of what it
    got and the error `stream_timed_out`, which a retry with the key replays."""
    monkeypatch.setitem(app.config, "HOLD_TTL_SECONDS", 2)
    monkeypatch.setitem(app.config, "STREAM_DEADLINE_SECONDS", 1.8)
    monkeypatch.setitem(app.config, "IDEMPOTENCY_TAKEOVER", timedelta(seconds=2))
    person, key = caller()
    fake_providers.script("openai", Answer(text=REPLY, usage=STREAMED_USAGES["openai"]))

    def post() -> Any:
        return client.post(
            "/v1/chat/completions",
            json={"model": "openai/gpt-test", "messages": messages(), "stream": True},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "slow-reader"},
        )

    chunks = iter(post().response)
    role, first = _sse_data(next(chunks) + next(chunks))
    hold_id = hold_of(role["id"])
    wait_for(lambda: scalar(app, select(Hold.status).where(Hold.id == hold_id)) == "settled")
    *_, usage, failure = rest = _sse_data(b"".join(chunks))
    assert rest[:-2] == [] and usage["choices"] == []
    assert failure["error"]["code"] == "stream_timed_out"
    assert first["choices"][0]["delta"]["content"] == REPLY.split(" ")[0]
    assert charged(app, hold_id) == parse_credits(usage["usage"]["credits"]) > 0
    replayed = post()
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert _sse_data(replayed.get_data())[-1]["error"]["code"] == "stream_timed_out"
    assert len(fake_providers.calls("openai")) == 1
    assert balance_of(client, person)["balance"] == format_credits(CREDITS - charged(app, hold_id))
    assert_consistent(app)


def test_models_lists_what_the_tier_and_the_key_allow_with_prices(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    server: ServerUrl,
    sdk: OpenAIClients,
    priced: None,
) -> None:
    add_price(app, "openai", "gpt-other", input="3", output="4")
    add_price(app, "anthropic", "claude-other", input="3", output="4")
    add_price(app, "openai", "gpt-free", input="0", output="0")  # not callable: not listed
    add_tier(app, "narrow", allowed_models=["openai:*", "demo:echo"])
    person = person_factory(tier="narrow", credits=CREDITS)
    _id, every = make_key(client, person)
    listed = sdk(server, every).models.list()
    assert sorted(model.id for model in listed.data) == [
        "demo/echo",
        "openai/gpt-other",
        "openai/gpt-test",
    ]
    _id, only_openai = make_key(client, person, allowed_models=["openai/*", "anthropic/*"])
    models = {model.id: model for model in sdk(server, only_openai).models.list()}
    assert sorted(models) == ["openai/gpt-other", "openai/gpt-test"]
    test_model = models["openai/gpt-test"]
    assert (test_model.object, test_model.owned_by) == ("model", "openai")
    assert test_model.model_extra == {
        "pricing": {"input": "1", "output": "2", "cached_input": "0.5", "cache_write": "1.25"}
    }
    assert models["openai/gpt-other"].model_extra["pricing"] == {
        "input": "3",
        "output": "4",
        "cached_input": None,
        "cache_write": None,
    }


def test_a_generation_is_its_owners_receipt(
    fake_providers: FakeProviders, server: ServerUrl, sdk: OpenAIClients, caller: Any
) -> None:
    _person, key = caller()
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    client = sdk(server, key)
    completion = client.chat.completions.create(model="openai/gpt-test", messages=messages())
    generation = client.get(f"/generations/{completion.id}", cast_to=object)
    assert generation["id"] == completion.id and generation["object"] == "generation"
    assert generation["credits"] == CHARGES["openai"]
    receipt = generation["receipt"]
    assert receipt["charged"] == CHARGES["openai"]
    _stranger, strangers_key = caller()
    with pytest.raises(openai.NotFoundError) as refused:
        sdk(server, strangers_key).get(f"/generations/{completion.id}", cast_to=object)
    assert refused.value.status_code == 404


def test_an_idempotent_retry_replays_the_same_completion(
    app: Flask, fake_providers: FakeProviders, server: ServerUrl, sdk: OpenAIClients, caller: Any
) -> None:
    _person, key = caller()
    client = sdk(server, key)
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    retry = {"Idempotency-Key": secrets.token_hex(8)}
    answers = [
        client.chat.completions.with_raw_response.create(
            model="openai/gpt-test", messages=messages(), extra_headers=retry
        )
        for _ in range(2)
    ]
    first, again = (answer.parse() for answer in answers)
    assert first.model_dump() == again.model_dump()
    assert answers[1].headers["Idempotent-Replayed"] == "true"
    # The credits the call held, charged and left are the replay's too.
    credit_headers = [
        {name: answer.headers.get(name) for name in CREDIT_HEADERS} for answer in answers
    ]
    assert credit_headers[0] == credit_headers[1]
    assert credit_headers[0]["X-Credits-Charged"] == CHARGES["openai"]
    assert len(fake_providers.calls("openai")) == 1
    assert charged(app, hold_of(first.id)) == parse_credits(CHARGES["openai"])
    assert charge_count(app) == 1

    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    retry = {"Idempotency-Key": secrets.token_hex(8)}
    streams = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="openai/gpt-test", messages=messages(), stream=True, extra_headers=retry
        )
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        held = raw.headers.get("X-Credits-Held")
        streams.append((chunks[0].id, text, chunks[-1].usage.model_dump(), held))
    assert raw.headers["Idempotent-Replayed"] == "true"
    assert streams[0] == streams[1] and streams[0][1] == REPLY and streams[0][3] is not None
    assert len(fake_providers.calls("openai")) == 2
    assert charge_count(app) == 2


def test_a_retry_through_another_key_of_the_same_user_is_the_same_request(
    app: Flask,
    client: FlaskClient,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    caller: Any,
) -> None:
    """Contract section 4: the same user and Idempotency-Key is one request, whichever of
    their keys sends it (a tool that rotated its key mid-retry): replayed, charged once."""
    person, first_key = caller()
    second_key = make_key(client, person, name="rotated")[1]
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    retry = {"Idempotency-Key": secrets.token_hex(8)}
    answers = [
        sdk(server, key).chat.completions.with_raw_response.create(
            model="openai/gpt-test", messages=messages(), extra_headers=retry
        )
        for key in (first_key, second_key)
    ]
    assert answers[1].headers["Idempotent-Replayed"] == "true"
    assert answers[0].parse().model_dump() == answers[1].parse().model_dump()
    assert len(fake_providers.calls("openai")) == 1
    assert charge_count(app) == 1
    # Another user's same key is theirs alone.
    _stranger, strangers_key = caller()
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    theirs = sdk(server, strangers_key).chat.completions.with_raw_response.create(
        model="openai/gpt-test", messages=messages(), extra_headers=retry
    )
    assert "Idempotent-Replayed" not in theirs.headers
    assert charge_count(app) == 2


def test_langchain_invokes_and_streams_through_the_gateway(
    app: Flask, fake_providers: FakeProviders, server: ServerUrl, caller: Any
) -> None:
    _person, key = caller()
    chat = ChatOpenAI(
        model="openai/gpt-test",
        base_url=f"{server}/v1",
        api_key=key,  # type: ignore[arg-type]
        max_retries=0,
        timeout=30,
    )
    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    answer = chat.invoke("Hello there")
    assert answer.content == REPLY
    usage = answer.response_metadata["token_usage"]
    assert usage["credits"] == CHARGES["openai"]
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] == 1400
    hold_id = hold_of(answer.response_metadata["id"])
    assert charged(app, hold_id) == parse_credits(usage["credits"])

    fake_providers.script("openai", Answer(text=REPLY, usage=USAGES["openai"]))
    streamed_answer = functools.reduce(operator.add, chat.stream("Hello there"))
    assert streamed_answer.content == REPLY
    streamed = streamed_answer.usage_metadata
    assert streamed is not None
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (1400, 200)
    # The same usage costs what the whole call's usage.credits said.
    assert charged(app, scalar(app, select(func.max(Hold.id)))) == parse_credits(usage["credits"])
    chat.root_client.close()
