"""Receipts (`GET /api/credit/transactions/<id>`): every charge explained from what was stored,
line by line, for every provider's usage shape, so that it can be checked by hand."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from creditapp.money import parse_credits
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation
from tests.integration.test_streaming import MODELS, PROVIDERS, USAGES, events_of

CREDITS = 100 * 1_000_000
# USAGES at 1 USD per 1M input tokens, 0.5 cached, 1.25 cache writes and 2 output.
LINES = {
    "openai": [("input", 400, "0.4"), ("cached_input", 1000, "0.5"), ("cache_write", 0, "0")],
    "anthropic": [
        ("input", 200, "0.2"),
        ("cached_input", 1000, "0.5"),
        ("cache_write", 200, "0.25"),
    ],
    "google": [("input", 400, "0.4"), ("cached_input", 1000, "0.5"), ("cache_write", 0, "0")],
}


@pytest.fixture
def priced(app: Flask) -> None:
    for provider, model in MODELS.items():
        add_price(
            app, provider, model, input="1", output="2", cached_input="0.5", cache_write="1.25"
        )


def charges(client: FlaskClient, person: Person) -> list[dict[str, Any]]:
    page = client.get("/api/credit/transactions?type=charge", headers=person.headers)
    return page.get_json()["items"]  # type: ignore[no-any-return]


def receipt_of(client: FlaskClient, person: Person, entry_id: str) -> dict[str, Any]:
    response = client.get(f"/api/credit/transactions/{entry_id}", headers=person.headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_charge_is_explained_line_by_line(
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    provider: str,
) -> None:
    user = person_factory(credits=CREDITS)
    conversation = start_conversation(client, user, provider, MODELS[provider])
    fake_providers.script(provider, Answer(usage=USAGES[provider]))
    # max_tokens 1000: a hold well above the cost, so that the settle releases some.
    exchange = send(client, user, conversation, max_tokens=1000).get_json()
    (charge,) = charges(client, user)
    found = receipt_of(client, user, charge["id"])
    assert found["entry"] == charge
    receipt = found["receipt"]
    assert (receipt["provider"], receipt["model"]) == (provider, MODELS[provider])
    assert receipt["usage"] == exchange["usage"]
    assert [(line["bucket"], line["tokens"], line["credits"]) for line in receipt["lines"]] == [
        *LINES[provider],
        ("output", 200, "0.4"),
    ]
    assert [line["usd_per_million"] for line in receipt["lines"]] == ["1", "0.5", "1.25", "2"]
    assert receipt["exact"] == receipt["rounded_up"] == receipt["charged"]
    assert receipt["charged"] == exchange["credits_charged"] == charge["amount"].lstrip("-")
    assert (receipt["uncollected"], receipt["ending"], receipt["partial"]) == (
        "0",
        "completed",
        False,
    )
    assert receipt["price"]["tier_above_input_tokens"] == 0
    # What was held, less the charge, came back.
    held, charged, released = (
        parse_credits(receipt[name]) for name in ("held", "charged", "released")
    )
    assert held > charged and released == held - charged


def test_rounding_up_is_shown(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    add_price(app, "openai", "gpt-tiny", input="0.000123", output="0.000001")
    user = person_factory(credits=CREDITS)
    conversation = start_conversation(client, user, "openai", "gpt-tiny")
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    fake_providers.script("openai", Answer(usage=usage))
    send(client, user, conversation)
    (charge,) = charges(client, user)
    receipt = receipt_of(client, user, charge["id"])["receipt"]
    # 7 x 0.000123 + 3 x 0.000001 USD per 1M tokens: 0.864 micro-credits, rounded up to 1.
    assert [line["credits"] for line in receipt["lines"]] == [
        "0.000000861",
        "0",
        "0",
        "0.000000003",
    ]
    assert receipt["exact"] == "0.000000864"
    assert receipt["rounded_up"] == receipt["charged"] == "0.000001"  # up, once


def test_a_partial_stream_says_so(
    client: FlaskClient, person_factory: Any, fake_providers: FakeProviders, priced: None
) -> None:
    user = person_factory(credits=CREDITS)
    conversation = start_conversation(client, user, "anthropic", MODELS["anthropic"])
    fake_providers.script("anthropic", Answer(text="one two three four", fail_after=2))
    events = events_of(send(client, user, conversation, stream=True).get_data())
    (charge,) = charges(client, user)
    receipt = receipt_of(client, user, charge["id"])["receipt"]
    assert (receipt["ending"], receipt["partial"]) == ("provider_failed", True)
    assert receipt["usage"]["estimated"] is True
    assert receipt["charged"] == events[-1][1]["credits_charged"]


def test_other_entries_have_no_receipt_and_others_entries_do_not_exist(
    client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    user = person_factory(credits=CREDITS)
    (grant,) = client.get("/api/credit/transactions", headers=user.headers).get_json()["items"]
    assert receipt_of(client, user, grant["id"]) == {"entry": grant, "receipt": None}
    stranger = person_factory(credits=CREDITS)
    assert_error(
        client.get(f"/api/credit/transactions/{grant['id']}", headers=stranger.headers),
        404,
        "not_found",
    )
    assert_error(
        client.get("/api/credit/transactions/x1", headers=user.headers), 400, "validation_error"
    )


def test_an_admin_sees_a_users_transactions_and_receipts_as_the_user_does(
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    admin: Person,
) -> None:
    user = person_factory(credits=CREDITS)
    conversation = start_conversation(client, user, "openai", MODELS["openai"])
    fake_providers.script("openai", Answer(usage=USAGES["openai"]))
    sent = send(client, user, conversation)
    assert sent.status_code == 201
    base = f"/api/admin/users/{user.id}/transactions"
    own = client.get("/api/credit/transactions", headers=user.headers).get_json()
    assert client.get(base, headers=admin.headers).get_json() == own
    # Described, they are the same too: each entry says what it was for in the same words.
    described = "?describe=true"
    own = client.get(f"/api/credit/transactions{described}", headers=user.headers).get_json()
    assert "description" in own["items"][0]
    assert client.get(f"{base}{described}", headers=admin.headers).get_json() == own
    # (Each streamed body read before the next request: the test client keeps its context.)
    own_csv = client.get("/api/credit/transactions?format=csv", headers=user.headers).data
    assert client.get(f"{base}?format=csv", headers=admin.headers).data == own_csv
    (charge,) = charges(client, user)
    seen = client.get(f"{base}/{charge['id']}", headers=admin.headers)
    # And the message the charge paid for, which an admin's refund names.
    message_id = sent.get_json()["message"]["id"]
    assert seen.get_json() == {**receipt_of(client, user, charge["id"]), "message_id": message_id}
    assert seen.get_json()["receipt"]["charged"] == charge["amount"].lstrip("-")

    stranger = person_factory(credits=CREDITS)
    assert_error(
        client.get(
            f"/api/admin/users/{stranger.id}/transactions/{charge['id']}", headers=admin.headers
        ),
        404,
        "not_found",
    )
    assert_error(client.get(base, headers=user.headers), 403, "forbidden")
    assert_error(
        client.get("/api/admin/users/999999999/transactions", headers=admin.headers),
        404,
        "not_found",
    )
