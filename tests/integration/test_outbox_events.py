"""Events written in the transaction of the change that causes them: thresholds crossed down,
re-armed and crossed again, depletion, refusals and rollbacks that emit nothing, the fan-out to
the endpoints that listen, a cap's first refusal in its period, grants about to expire."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits
from creditapp.extensions import db
from creditapp.ledger import alerts
from creditapp.ledger.models import Account
from creditapp.signals.models import WebhookDelivery, WebhookEvent
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import FakeProviders
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    add_price,
    deliver,
    new_endpoint,
    new_team,
    run_job_at,
    start_conversation,
    started,
)

CR = 1_000_000
HOOK = "https://hooks.example.com/credits"
TTL = timedelta(minutes=10)


def run(operation: Any, **kwargs: Any) -> Any:
    """One ledger operation in its own committed transaction."""
    kwargs.setdefault("context", TEST_CONTEXT)
    kwargs.setdefault("now", utcnow())
    with write_transaction(db.session):
        return operation(db.session, **kwargs)


def set_thresholds(account_id: int, *credits: int) -> list[alerts.Threshold]:
    with write_transaction(db.session):
        return alerts.set_thresholds(
            db.session, account_id=account_id, amounts=[c * CR for c in credits], now=utcnow()
        )


def events(account_id: int) -> list[tuple[str, dict[str, Any]]]:
    db.session.rollback()
    rows = db.session.scalars(
        select(WebhookEvent).where(WebhookEvent.account_id == account_id).order_by(WebhookEvent.id)
    )
    return [(row.type, row.data) for row in rows]


def low(person: Person, threshold: str, available: str) -> tuple[str, dict[str, Any]]:
    return (
        "balance.low",
        {
            "account_id": str(person.account_id),
            "user_id": str(person.id),
            "threshold": threshold,
            "available": available,
        },
    )


@pytest.fixture
def person(ctx: Flask, person_factory: Any) -> Person:
    made: Person = person_factory(credits=100 * CR)
    return made


def test_a_threshold_fires_once_per_crossing_and_is_re_armed_above_it(person: Person) -> None:
    account = person.account_id
    assert set_thresholds(account, 50, 20) == [
        alerts.Threshold(20 * CR, True),
        alerts.Threshold(50 * CR, True),
    ]
    run(ledger.adjust, account_id=account, amount=-50 * CR, reason="to 50")
    assert events(account) == []  # at 50, not below it
    run(ledger.adjust, account_id=account, amount=-1 * CR, reason="to 49")
    assert events(account) == [low(person, "50", "49")]
    run(ledger.adjust, account_id=account, amount=1 * CR, reason="back to 50")
    run(ledger.adjust, account_id=account, amount=-5 * CR, reason="to 45")
    assert len(events(account)) == 1  # at 50 is not above it: not re-armed
    run(ledger.adjust, account_id=account, amount=6 * CR, reason="to 51")
    run(ledger.adjust, account_id=account, amount=-32 * CR, reason="to 19")
    assert events(account) == [
        low(person, "50", "49"),
        low(person, "50", "19"),
        low(person, "20", "19"),
    ]
    assert alerts.thresholds(db.session, account_id=account) == [
        alerts.Threshold(20 * CR, False),
        alerts.Threshold(50 * CR, False),
    ]


def test_holds_count_and_a_void_re_arms(person: Person) -> None:
    account = person.account_id
    set_thresholds(account, 30)
    held = run(ledger.hold, account_id=account, amount=80 * CR, ttl=TTL)
    assert events(account) == [low(person, "30", "20")]
    run(ledger.void, hold_id=held.hold_id)
    assert alerts.thresholds(db.session, account_id=account) == [alerts.Threshold(30 * CR, True)]
    held = run(ledger.hold, account_id=account, amount=71 * CR, ttl=TTL)
    run(ledger.settle, hold_id=held.hold_id, actual=70 * CR)
    assert events(account) == [low(person, "30", "20"), low(person, "30", "29")]


def test_depleted_at_zero_once_and_again_after_a_refill(person: Person) -> None:
    account = person.account_id
    new_endpoint(person, HOOK, "balance.depleted")
    held = run(ledger.hold, account_id=account, amount=100 * CR, ttl=TTL)
    run(ledger.settle, hold_id=held.hold_id, actual=100 * CR)
    depleted = (
        "balance.depleted",
        {"account_id": str(account), "user_id": str(person.id), "available": "0"},
    )
    assert events(account) == [depleted]  # the hold took available to 0; the settle kept it
    run(ledger.grant, account_id=account, amount=2 * CR, source="promo", reason="refill")
    run(ledger.adjust, account_id=account, amount=-2 * CR, reason="spent")
    assert events(account) == [depleted, depleted]


def test_a_refused_or_rolled_back_change_emits_nothing(person: Person) -> None:
    account = person.account_id
    set_thresholds(account, 90)
    with pytest.raises(BalanceWouldGoNegative):
        run(ledger.adjust, account_id=account, amount=-101 * CR, reason="too much")
    with pytest.raises(InsufficientCredits):
        run(ledger.hold, account_id=account, amount=101 * CR, ttl=TTL)
    with pytest.raises(RuntimeError), write_transaction(db.session):
        ledger.adjust(
            db.session,
            account_id=account,
            amount=-50 * CR,
            reason="x",
            context=TEST_CONTEXT,
            now=utcnow(),
        )
        raise RuntimeError("the request failed after its ledger operation")
    assert events(account) == []
    assert ledger.balance(db.session, account_id=account, now=utcnow()).available == 100 * CR
    assert alerts.thresholds(db.session, account_id=account) == [alerts.Threshold(90 * CR, True)]


def test_an_account_nobody_listens_to_is_not_watched_and_emits_nothing(person: Person) -> None:
    account = person.account_id
    run(ledger.adjust, account_id=account, amount=-100 * CR, reason="all of it")
    assert events(account) == []
    assert db.session.scalar(select(Account.watched).where(Account.id == account)) is False
    set_thresholds(account, 10)
    assert db.session.scalar(select(Account.watched).where(Account.id == account)) is True
    set_thresholds(account)
    assert db.session.scalar(select(Account.watched).where(Account.id == account)) is False


def test_a_threshold_set_above_what_is_available_waits_for_a_rise(person: Person) -> None:
    account = person.account_id
    assert set_thresholds(account, 200, 100) == [
        alerts.Threshold(100 * CR, True),  # at it, not below: armed
        alerts.Threshold(200 * CR, False),
    ]
    run(ledger.adjust, account_id=account, amount=-1 * CR, reason="to 99")
    assert events(account) == [low(person, "100", "99")]
    # Setting them again keeps their state: no second event for the same dip.
    set_thresholds(account, 200, 100)
    run(ledger.adjust, account_id=account, amount=-1 * CR, reason="to 98")
    assert len(events(account)) == 1


def test_an_event_goes_to_the_enabled_endpoints_listening_to_its_type(person: Person) -> None:
    account = person.account_id
    listening = new_endpoint(person, HOOK, "balance.low", "balance.depleted")
    new_endpoint(person, HOOK, "purchase.completed")
    new_endpoint(person, HOOK, "balance.low", enabled=False)
    set_thresholds(account, 10)
    run(ledger.adjust, account_id=account, amount=-95 * CR, reason="to 5")
    [(event_id, _)] = [(row.id, row.type) for row in db.session.scalars(select(WebhookEvent))]
    deliveries = db.session.scalars(select(WebhookDelivery)).all()
    assert [(d.event_id, d.endpoint_id, d.status, d.attempts) for d in deliveries] == [
        (event_id, listening, "pending", 0)
    ]


def test_a_transfer_crosses_on_the_side_it_empties(ctx: Flask, person_factory: Any) -> None:
    member = person_factory(credits=40 * CR)
    _, team_account = new_team(member.id)
    set_thresholds(member.account_id, 10)
    run(
        ledger.transfer,
        from_account=member.account_id,
        to_account=team_account,
        amount=35 * CR,
        user_id=member.id,
        references=("to team", "from member"),
    )
    assert events(member.account_id) == [low(member, "10", "5")]
    assert events(team_account) == []


# A cap's first refusal in its period, and grants about to expire


def test_a_key_limit_reached_is_announced_once_per_period(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    add_price(app, "openai", "gpt-capped", input="0", output="1000")
    owner = person_factory(credits=1000 * CR)
    made = client.post(
        "/api/keys",
        json={"name": "capped", "limit": "5", "limit_period": "total"},
        headers={**owner.headers, "Idempotency-Key": "key-1"},
    )
    assert made.status_code == 201
    key = made.get_json()
    call = {
        "model": "openai/gpt-capped",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    for _ in range(2):
        refused = client.post(
            "/v1/chat/completions", json=call, headers={"Authorization": f"Bearer {key['key']}"}
        )
        assert refused.status_code == 402
        assert refused.get_json()["error"]["code"] == "key_limit_reached"
    with app.app_context():
        assert events(owner.account_id) == [
            (
                "key.limit_reached",
                {
                    "account_id": str(owner.account_id),
                    "user_id": str(owner.id),
                    "key_id": key["id"],
                    "limit": "5",
                    "period": "total",
                },
            )
        ]
        db.session.remove()
    # A raised limit reached again is announced again, in the same period.
    raised = client.patch(f"/api/keys/{key['id']}", json={"limit": "8"}, headers=owner.headers)
    assert raised.status_code == 200
    refused = client.post(
        "/v1/chat/completions", json=call, headers={"Authorization": f"Bearer {key['key']}"}
    )
    assert refused.status_code == 402
    with app.app_context():
        assert [data["limit"] for _, data in events(owner.account_id)] == ["5", "8"]
        db.session.remove()
    assert fake_providers.calls("openai") == []


def test_grant_expiring_is_announced_once_to_watched_accounts(
    app: Flask, person_factory: Any
) -> None:
    now = utcnow()
    watched = person_factory()
    quiet = person_factory()
    with app.app_context():
        for person in (watched, quiet):
            run(
                ledger.grant,
                account_id=person.account_id,
                amount=7 * CR,
                source="promo",
                reason="trial",
                expires_at=now + timedelta(days=2),
            )
            run(
                ledger.grant,
                account_id=person.account_id,
                amount=3 * CR,
                source="promo",
                reason="later",
                expires_at=now + timedelta(days=10),
            )
        set_thresholds(watched.account_id, 1)
        db.session.remove()
    assert run_job_at(app, "expire-grants", now)["expiring_announced"] == 1
    assert run_job_at(app, "expire-grants", now)["expiring_announced"] == 0
    with app.app_context():
        [(event_type, data)] = events(watched.account_id)
        assert event_type == "grant.expiring"
        assert (data["source"], data["remaining"]) == ("promo", "7")
        assert events(quiet.account_id) == []
        db.session.remove()


def test_a_purchase_announces_its_grant_and_each_refund_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    paid = fake_stripe.pay(session_id, deliver=False)
    deliver(client, fake_stripe, paid)
    deliver(client, fake_stripe, paid)  # Stripe sends it again: granted once, announced once
    partial = fake_stripe.refund(session_id, 200, deliver=False)
    deliver(client, fake_stripe, partial)
    deliver(client, fake_stripe, fake_stripe.refund(session_id, deliver=False))
    deliver(client, fake_stripe, partial)  # a late, older event: nothing more
    with app.app_context():
        announced = [
            (event_type, data["status"], data["clawed_back"])
            for event_type, data in events(person.account_id)
        ]
        [(_, completed)] = events(person.account_id)[:1]
        db.session.remove()
    assert announced == [
        ("purchase.completed", "paid", "0"),
        ("purchase.refunded", "partially_refunded", "2000"),
        ("purchase.refunded", "refunded", "5000"),
    ]
    assert completed == {
        "account_id": str(person.account_id),
        "user_id": str(person.id),
        "purchase_id": purchase_id,
        "status": "paid",
        "credits": "5000",
        "amount_cents": 500,
        "currency": "usd",
        "refunded_cents": 0,
        "clawed_back": "0",
        "shortfall": "0",
        "buyer_id": str(person.id),
    }


def test_a_member_cap_reached_is_announced_to_the_team(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    add_price(app, "openai", "gpt-capped", input="0", output="1000")
    owner = person_factory(credits=100 * CR)
    member = person_factory()
    with app.app_context():
        team_id, team_account = new_team(owner.id, member.id, cap=1 * CR)
        run(ledger.grant, account_id=team_account, amount=100 * CR, source="promo", reason="t")
        db.session.remove()
    conversation = start_conversation(client, member, "openai", "gpt-capped")
    refused = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "hello", "max_tokens": 100, "team_id": str(team_id)},
        headers={**member.headers, "Idempotency-Key": "m-1"},
    )
    assert refused.status_code == 402, refused.get_json()
    assert refused.get_json()["error"]["code"] == "member_cap_reached"
    with app.app_context():
        assert events(team_account) == [
            (
                "team.member_cap_reached",
                {
                    "account_id": str(team_account),
                    "team_id": str(team_id),
                    "member_user_id": str(member.id),
                    "limit": "1",
                    "period": "month",
                },
            )
        ]
        db.session.remove()
    assert fake_providers.calls("openai") == []
