"""Every refusal of the OpenAI-compatible gateway raises the typed exception of OpenAI's own SDK
(so that any OpenAI client handles it as it handles OpenAI's), against a real gunicorn: a bad
request, a missing or dead key, a model the key or tier does not allow, an unknown model, too
few credits or too low a limit, a rate limit, a provider failing before or during a stream. A
refused call is charged nothing; a stream cut by its provider is charged for what it
delivered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from creditapp.money import parse_credits
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_consistent
from tests.integration.gateway_client import (
    OpenAIClients,
    add_tier,
    charge_count,
    charged,
    make_key,
    refused,
)
from tests.integration.live_server import ServerUrl, live_server

pytestmark = pytest.mark.real_clock

CREDITS = 100 * 1_000_000
MODELS = {"openai": "gpt-test", "anthropic": "claude-test"}
MODEL = "openai/gpt-test"
MESSAGES = [{"role": "user", "content": "Hello there"}]
REPLY = "A reply cut short by its provider after a few words."


@pytest.fixture(scope="module")
def server(app: Flask) -> Iterator[ServerUrl]:
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}, threads=4) as base:
        yield base


@pytest.fixture(autouse=True)
def priced(app: Flask) -> None:
    add_price(app, "openai", "gpt-test", input="1", output="2")
    add_price(app, "anthropic", "claude-test", input="1", output="2")


@pytest.fixture
def sdk() -> Iterator[OpenAIClients]:
    with OpenAIClients() as clients:
        yield clients


def test_a_bad_request_names_its_parameter(
    client: FlaskClient, person_factory: Any, server: ServerUrl, sdk: OpenAIClients
) -> None:
    _id, key = make_key(client, person_factory(credits=CREDITS))
    gateway = sdk(server, key)
    with pytest.raises(openai.BadRequestError) as empty:
        gateway.chat.completions.create(model=MODEL, messages=[])
    assert refused(empty.value, 400, "validation_error")["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as negative:
        gateway.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)
    body = refused(negative.value, 400, "validation_error")
    assert body["param"] == "max_tokens" and body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as unknown:
        gateway.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert refused(unknown.value, 400, "validation_error")["param"] == "n"


def test_a_call_without_a_live_key_is_unauthenticated(
    client: FlaskClient, person_factory: Any, server: ServerUrl, sdk: OpenAIClients
) -> None:
    person = person_factory(credits=CREDITS)
    key_id, key = make_key(client, person)
    assert client.delete(f"/api/keys/{key_id}", headers=person.headers).status_code == 204
    bearer_of_nothing = sdk(server, "unused", default_headers={"Authorization": ""})
    for gateway in (
        bearer_of_nothing,
        sdk(server, "ca-" + "x" * 43),
        sdk(server, key),  # revoked
        sdk(server, person.token),  # an access token opens /api, not /v1
    ):
        with pytest.raises(openai.AuthenticationError) as unauthenticated:
            gateway.chat.completions.create(model=MODEL, messages=MESSAGES)
        body = refused(unauthenticated.value, 401, "invalid_api_key")
        assert body["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            gateway.models.list()
    assert charge_count(client.application) == 0


def test_a_model_the_key_or_the_tier_does_not_allow_is_forbidden(
    app: Flask, client: FlaskClient, person_factory: Any, server: ServerUrl, sdk: OpenAIClients
) -> None:
    _id, key = make_key(
        client, person_factory(credits=CREDITS), allowed_models=["anthropic/claude-test"]
    )
    with pytest.raises(openai.PermissionDeniedError) as by_key:
        sdk(server, key).chat.completions.create(model=MODEL, messages=MESSAGES)
    refused(by_key.value, 403, "model_not_allowed")
    add_tier(app, "anthropic_only", allowed_models=["anthropic:*"])
    _id, key = make_key(client, person_factory(credits=CREDITS, tier="anthropic_only"))
    with pytest.raises(openai.PermissionDeniedError) as by_tier:
        sdk(server, key).chat.completions.create(model=MODEL, messages=MESSAGES)
    refused(by_tier.value, 403, "model_not_allowed")
    assert charge_count(app) == 0


def test_an_unknown_or_unpriced_model_is_not_found(
    client: FlaskClient, person_factory: Any, server: ServerUrl, sdk: OpenAIClients
) -> None:
    _id, key = make_key(client, person_factory(credits=CREDITS))
    gateway = sdk(server, key)
    for model in ("gpt-test", "nobody/gpt-test", "openai/gpt-unpriced"):
        with pytest.raises(openai.NotFoundError) as not_found:
            gateway.chat.completions.create(model=model, messages=MESSAGES)
        refused(not_found.value, 404, "model_not_found")
    with pytest.raises(openai.NotFoundError) as no_generation:
        gateway.get("/generations/gen-999999", cast_to=object)
    refused(no_generation.value, 404, "not_found")


def test_too_few_credits_too_low_a_limit_or_max_credits_is_402(
    app: Flask, client: FlaskClient, person_factory: Any, server: ServerUrl, sdk: OpenAIClients
) -> None:
    _id, poor = make_key(client, person_factory(credits=1_000))
    _id, limited = make_key(client, person_factory(credits=CREDITS), limit="0.001")
    _id, careful = make_key(client, person_factory(credits=CREDITS))
    for key, headers, code in (
        (poor, {}, "insufficient_credits"),
        (limited, {}, "key_limit_reached"),
        (careful, {"X-Max-Credits": "0.000001"}, "max_credits_exceeded"),
    ):
        with pytest.raises(openai.APIStatusError) as payment_required:
            sdk(server, key).chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers=headers
            )
        refused(payment_required.value, 402, code)
    assert charge_count(app) == 0


def test_the_tier_rate_limit_counts_every_key_of_its_owner_together(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    sdk: OpenAIClients,
) -> None:
    add_tier(app, "trickle", rate_limits={"spending": "2 per minute"})
    person = person_factory(credits=CREDITS, tier="trickle")
    (_id, first), (_id, second) = make_key(client, person), make_key(client, person)
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "RATELIMIT_ENABLED": "true"}
    # Limits count per user (contract, section 4): a second key buys no second budget.
    with live_server(env) as base:
        for key in (first, second):
            sdk(base, key).chat.completions.create(model=MODEL, messages=MESSAGES)
        for key in (first, second):
            with pytest.raises(openai.RateLimitError) as limited:
                sdk(base, key).chat.completions.create(model=MODEL, messages=MESSAGES)
            refused(limited.value, 429, "rate_limited")
            assert 0 < int(limited.value.response.headers["Retry-After"]) <= 60
    assert len(fake_providers.calls("openai")) == 2
    assert charge_count(app) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_failure_is_a_502_and_charges_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    stream: bool,
) -> None:
    person = person_factory(credits=CREDITS)
    _id, key = make_key(client, person)
    fake_providers.script("openai", Answer(status=500))
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(server, key).chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
    refused(failed.value, 502, "provider_error")
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("100", "0")
    assert charge_count(app) == 0
    assert_consistent(app)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_provider_failing_mid_stream_raises_and_the_delivered_part_is_charged(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    provider: str,
) -> None:
    person = person_factory(credits=CREDITS)
    _id, key = make_key(client, person)
    fake_providers.script(provider, Answer(text=REPLY, fail_after=3))
    stream = sdk(server, key).chat.completions.create(
        model=f"{provider}/{MODELS[provider]}", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.append(chunk)
    assert failed.value.body["code"] == "provider_error"  # type: ignore[index]
    assert failed.value.message == (
        "The AI provider failed during the reply: what it delivered is charged."
    )
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == " ".join(REPLY.split(" ")[:3])
    usage = received[-1].usage
    assert received[-1].choices == [] and usage is not None
    credits = parse_credits(usage.model_extra["credits"])
    assert charged(app) == credits > 0
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (parse_credits(balance["balance"]), balance["reserved"]) == (CREDITS - credits, "0")
    assert_consistent(app)


def test_a_provider_failing_before_its_first_word_raises_and_charges_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
) -> None:
    person = person_factory(credits=CREDITS)
    _id, key = make_key(client, person)
    fake_providers.script("openai", Answer(text=REPLY, fail_after=0))
    stream = sdk(server, key).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.append(chunk)
    assert failed.value.body["code"] == "provider_error"  # type: ignore[index]
    assert [chunk.choices[0].delta.content for chunk in received] == [""]
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("100", "0")
    assert charge_count(app) == 0
    assert_consistent(app)


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_reply_the_provider_billed_is_its_failure_and_refunded(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    server: ServerUrl,
    sdk: OpenAIClients,
    stream: bool,
) -> None:
    person = person_factory(credits=CREDITS)
    _id, key = make_key(client, person)
    billed = {"prompt_tokens": 10, "completion_tokens": 5}  # 0.02 credits
    fake_providers.script("openai", Answer(text="", usage=billed))
    gateway = sdk(server, key).chat.completions
    if stream:
        received = []
        with pytest.raises(openai.APIError) as failed:
            for chunk in gateway.create(model=MODEL, messages=MESSAGES, stream=True):
                received.append(chunk)
        # No chunk says the reply finished: the last one before the error is the usage.
        assert all(choice.finish_reason is None for c in received for choice in c.choices)
        assert received[-1].usage is not None
        assert received[-1].usage.model_extra["credits"] == "0.02"
        assert failed.value.body["code"] == "provider_error"  # type: ignore[index]
    else:
        retry = {"Idempotency-Key": "empty-reply"}
        with pytest.raises(openai.InternalServerError) as failed_whole:
            gateway.with_raw_response.create(model=MODEL, messages=MESSAGES, extra_headers=retry)
        refused(failed_whole.value, 502, "provider_error")
        headers = failed_whole.value.response.headers
        assert (headers["X-Credits-Charged"], headers["X-Credits-Available"]) == ("0.02", "100")
        # Its replay: the same failure and charge, the balance as the settle left it (the
        # refund was paid after the settle committed).
        with pytest.raises(openai.InternalServerError) as replayed:
            gateway.with_raw_response.create(model=MODEL, messages=MESSAGES, extra_headers=retry)
        # Byte for byte: its body names the first request's id.
        assert replayed.value.status_code == 502
        assert replayed.value.body == failed_whole.value.body
        again = replayed.value.response.headers
        assert again["Idempotent-Replayed"] == "true"
        assert (again["X-Credits-Charged"], again["X-Credits-Available"]) == ("0.02", "99.98")
    assert charged(app) == 20_000
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("100", "0")
    assert_consistent(app)
