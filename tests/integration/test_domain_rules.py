"""Every rule the domain owns breaks as its own error, with its code and 4xx status: through
HTTP where a request can reach it, on the domain function where only code can."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp import errors, ledger
from creditapp.billing.models import UsageRecord
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import Grant, LedgerEntry
from creditapp.pricing import book
from creditapp.pricing.models import Price
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation

CR = 1_000_000


def _count(app: Flask, model: Any) -> int:
    with app.app_context():
        total = int(db.session.scalar(select(func.count()).select_from(model)) or 0)
        db.session.remove()
    return total


def test_admins_grant_no_subscription_credits(
    app: Flask, client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    user = person_factory()
    response = client.post(
        "/api/admin/credit/grant",
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": "5", "reason": "x", "source": "subscription"},
    )
    error = assert_error(response, 400, "subscription_credits_by_refresh_only")
    assert list(error["details"]) == ["source"]
    assert _count(app, Grant) == 0


@pytest.mark.parametrize("expires_at", ["2020-01-01T00:00:00Z", "now"])
def test_a_grant_expires_in_the_future(
    app: Flask, client: FlaskClient, admin: Person, person_factory: Any, expires_at: str
) -> None:
    user = person_factory()
    if expires_at == "now":
        expires_at = (utcnow() - timedelta(milliseconds=1)).isoformat()
    response = client.post(
        "/api/admin/credit/grant",
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": "5", "reason": "x", "expires_at": expires_at},
    )
    assert assert_error(response, 400, "expiry_not_in_future")["details"] == {
        "expires_at": ["Must be in the future."]
    }
    assert _count(app, Grant) == 0


# "-0" is not an amount at all (test_hostile_input.py): a validation error, not this rule.
@pytest.mark.parametrize("amount", ["0", 0, "0.000000"])
def test_an_adjustment_is_never_zero(
    app: Flask, client: FlaskClient, admin: Person, person_factory: Any, amount: object
) -> None:
    user = person_factory(credits=CR)
    response = client.post(
        "/api/admin/credit/adjust",
        headers=admin.headers,
        json={"user_id": str(user.id), "amount": amount, "reason": "x"},
    )
    assert list(assert_error(response, 400, "zero_adjustment")["details"]) == ["amount"]
    assert _count(app, LedgerEntry) == 1


@pytest.mark.parametrize(
    ("field", "price"),
    [
        ("input", "0.0000001"),
        ("output", "1.00000000000000000000000000000001"),
        ("cached_input", "2.1234567"),
    ],
)
def test_a_price_has_at_most_6_decimals(
    app: Flask, client: FlaskClient, admin: Person, field: str, price: str
) -> None:
    body = {"provider": "openai", "model": "gpt-new", "input": "2.5", "output": "10", field: price}
    response = client.put("/api/admin/pricing", json=body, headers=admin.headers)
    assert list(assert_error(response, 400, "price_too_precise")["details"]) == [field]
    assert _count(app, Price) == 0


@pytest.mark.parametrize("price", ["2.5000000000", "1000", "0.000001", "0"])
def test_trailing_zeros_are_not_decimals(client: FlaskClient, admin: Person, price: str) -> None:
    body = {"provider": "openai", "model": "gpt-new", "input": price, "output": "10"}
    assert client.put("/api/admin/pricing", json=body, headers=admin.headers).status_code == 201


def test_a_model_is_priced_by_its_own_providers_row(app: Flask) -> None:
    add_price(app, "openai", "same-name", input="1", output="1")
    add_price(app, "anthropic", "same-name", input="3", output="3")
    with app.app_context():
        anthropic = book.price_in_force(
            db.session, provider="anthropic", model="same-name", at=utcnow()
        )
        assert anthropic.input == 3
        with pytest.raises(errors.ModelNotPriced):
            book.price_in_force(db.session, provider="google", model="same-name", at=utcnow())
        db.session.remove()


@pytest.mark.parametrize(
    "usage",
    [
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 6},
        },
        # More than any call reads: priced, it would not fit an amount's column.
        {"prompt_tokens": 10**17, "completion_tokens": 5},
        {"prompt_tokens": 10**9 + 1, "completion_tokens": 5},
    ],
    ids=["reasoning-above-output", "input-past-any-amount", "input-past-a-billion"],
)
def test_usage_that_contradicts_itself_is_a_provider_error_and_charges_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    usage: dict[str, Any],
) -> None:
    person = person_factory(credits=10 * CR)
    add_price(app, "openai", "gpt-rules", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-rules")
    fake_providers.script("openai", Answer(usage=usage))
    error = assert_error(send(client, person, conversation), 502, "provider_error")
    assert error["details"]["reason"].startswith("inconsistent usage")
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("10", "0")


def test_output_reported_above_max_tokens_is_charged_as_max_tokens(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """A provider writes at most what it was asked for, reasoning included: a report of a
    billion output tokens for a call of 10 is charged as 10, not the caller's whole balance."""
    person = person_factory(credits=10 * CR)
    add_price(app, "openai", "gpt-rules", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-rules")
    fake_providers.script(
        "openai",
        Answer(
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 10**9,
                "completion_tokens_details": {"reasoning_tokens": 10**9},
            }
        ),
    )
    response = send(client, person, conversation, max_tokens=10)
    assert response.status_code == 201
    # 100 input and 10 output tokens at 1 USD per 1M tokens: 0.00011 USD, 0.11 credits.
    assert response.get_json()["credits_charged"] == "0.11"
    with app.app_context():
        (record,) = db.session.scalars(select(UsageRecord)).all()
        assert (record.input_tokens, record.output_tokens, record.reasoning_tokens) == (100, 10, 10)
        db.session.remove()
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("9.89", "0")


def test_output_estimated_from_a_reply_is_at_most_max_tokens(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """A provider that reports no usage is charged an estimate from the text, and a call of
    max_tokens 1 wrote at most 1 token, however long the text looks."""
    person = person_factory(credits=10 * CR)
    add_price(app, "openai", "gpt-rules", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-rules")
    fake_providers.script("openai", Answer(text="A reply of many words " * 20, usage=None))
    body = send(client, person, conversation, max_tokens=1).get_json()
    assert (body["usage"]["output_tokens"], body["usage"]["estimated"]) == (1, True)


@pytest.fixture
def account(ctx: Flask, person_factory: Any) -> int:
    return int(person_factory(credits=10 * CR).account_id)


def _ledger(operation: Any, **kwargs: Any) -> Any:
    with write_transaction(db.session):
        return operation(db.session, context=TEST_CONTEXT, **kwargs)


@pytest.mark.parametrize(
    ("operation", "kwargs", "error"),
    [
        (ledger.grant, {"amount": 0, "source": "promo", "reason": "x"}, errors.AmountNotPositive),
        (ledger.grant, {"amount": 1, "source": "gift", "reason": "x"}, errors.UnknownGrantSource),
        (ledger.hold, {"amount": -1, "ttl": timedelta(minutes=1)}, errors.AmountNotPositive),
        (ledger.hold, {"amount": 0, "ttl": timedelta(minutes=1)}, errors.AmountNotPositive),
        (ledger.refund, {"amount": 0, "reason": "x", "reference": "r"}, errors.AmountNotPositive),
        (ledger.adjust, {"amount": 0, "reason": "x"}, errors.ZeroAdjustment),
    ],
)
def test_rules_only_code_can_reach_raise_their_own_errors(
    account: int, operation: Any, kwargs: dict[str, Any], error: type[errors.CreditAppError]
) -> None:
    with pytest.raises(error):
        _ledger(operation, account_id=account, now=utcnow(), **kwargs)


def test_a_charge_is_never_negative_and_only_an_overdue_hold_expires(account: int) -> None:
    now = utcnow()
    held = _ledger(ledger.hold, account_id=account, amount=CR, ttl=timedelta(minutes=5), now=now)
    with pytest.raises(errors.NegativeCharge):
        _ledger(ledger.settle, hold_id=held.hold_id, actual=-1, now=now)
    with pytest.raises(errors.HoldNotExpired):
        _ledger(ledger.expire_hold, hold_id=held.hold_id, now=now + timedelta(minutes=4))


def test_every_error_states_its_rule_with_a_code_and_a_status() -> None:
    classes = [
        member
        for _name, member in inspect.getmembers(errors, inspect.isclass)
        if issubclass(member, errors.CreditAppError) and member is not errors.CreditAppError
    ]
    assert len(classes) > 20
    for error_class in classes:
        assert error_class.__doc__ and error_class.__doc__ != errors.CreditAppError.__doc__
        assert error_class.code != errors.CreditAppError.code, error_class
        assert 400 <= error_class.status < 600
    codes = [error_class.code for error_class in classes]
    assert len(codes) == len(set(codes)), "each rule has its own code"
