"""Subscription refresh: exactly once per user and period, on the calendar's edges, under
concurrent runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import Grant
from creditapp.money import parse_credits
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    TEST_CONTEXT,
    add_price,
    assert_consistent,
    assert_error,
    run_job_at,
    run_job_at_once,
    send,
    start_conversation,
)

postgres_only = pytest.mark.postgres_only

CREDIT = 1_000_000


def subscription_grants(app: Flask, person: Person) -> list[tuple[str, int, int]]:
    with app.app_context():
        rows = db.session.execute(
            select(Grant.period, Grant.amount, Grant.remaining)
            .where(Grant.account_id == person.account_id, Grant.source == "subscription")
            .order_by(Grant.id)
        ).all()
        db.session.remove()
    return [tuple(row) for row in rows]


def test_refresh_renews_at_the_end_of_each_period_and_ends_the_old_grant(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(tier="free")  # 100 credits a month, granted at creation
    joined = utcnow()
    assert subscription_grants(app, person) == [(f"{joined:%Y-%m}", 100 * CREDIT, 100 * CREDIT)]

    assert run_job_at(app, "refresh", joined + timedelta(days=1))["granted"] == 0
    next_period = joined + timedelta(days=40)
    assert run_job_at(app, "refresh", next_period)["granted"] == 1
    grants = subscription_grants(app, person)
    assert [g[2] for g in grants] == [0, 100 * CREDIT]  # the old remainder expired
    # Several missed periods: one grant, for the period containing now.
    assert run_job_at(app, "refresh", joined + timedelta(days=200))["granted"] == 1
    assert len(subscription_grants(app, person)) == 3
    assert run_job_at(app, "refresh", joined + timedelta(days=200))["granted"] == 0
    assert_consistent(app)


@pytest.mark.parametrize("spent", [False, True])
def test_a_run_as_of_an_earlier_time_leaves_a_later_period_granted(
    app: Flask, person_factory: Any, spent: bool
) -> None:
    """Two runs overlapping (one as of an earlier time, from a slow run or a clock behind):
    the earlier one's period, coming second, neither ends the later period's credits nor adds
    its own, already over; whether the later period's credits are spent or not."""
    person = person_factory(tier="free")
    joined = utcnow()
    assert run_job_at(app, "refresh", joined + timedelta(days=40))["granted"] == 1
    with app.app_context():
        if spent:
            with write_transaction(db.session):
                ledger.adjust(
                    db.session,
                    account_id=person.account_id,
                    amount=-100 * CREDIT,
                    reason="spent",
                    context=TEST_CONTEXT,
                    now=joined + timedelta(days=41),
                )
        db.session.remove()
    before = subscription_grants(app, person)
    with app.app_context():
        with write_transaction(db.session):
            late = ledger.refresh(
                db.session,
                account_id=person.account_id,
                period="an earlier one",
                amount=100 * CREDIT,
                expires_at=joined + timedelta(days=20),
                context=TEST_CONTEXT,
                now=joined + timedelta(days=1),
            )
        db.session.remove()
    assert not late.created
    assert subscription_grants(app, person) == before
    assert before[-1][2] == (0 if spent else 100 * CREDIT)
    assert_consistent(app)


def test_a_user_anchored_on_the_31st_renews_on_the_last_day_of_february(
    app: Flask, person_factory: Any
) -> None:
    # Every time is given: whatever today is, the user joined on 31 January 2027 at 09:00.
    person = person_factory(tier="free", joined_at=datetime(2027, 1, 31, 9, 0, tzinfo=UTC))
    assert run_job_at(app, "refresh", datetime(2027, 2, 28, 8, 59, tzinfo=UTC))["granted"] == 0
    assert run_job_at(app, "refresh", datetime(2027, 2, 28, 9, 0, tzinfo=UTC))["granted"] == 1
    assert run_job_at(app, "refresh", datetime(2027, 3, 30, 9, 0, tzinfo=UTC))["granted"] == 0
    assert run_job_at(app, "refresh", datetime(2027, 3, 31, 9, 0, tzinfo=UTC))["granted"] == 1
    assert subscription_grants(app, person) == [
        ("2027-01", 100 * CREDIT, 0),
        ("2027-02", 100 * CREDIT, 0),
        ("2027-03", 100 * CREDIT, 100 * CREDIT),
    ]


@postgres_only
def test_refresh_three_times_at_once_grants_once(app: Flask, person_factory: Any) -> None:
    people = [person_factory(tier="free") for _ in range(20)]
    later = utcnow() + timedelta(days=40)
    results = run_job_at_once(app, "refresh", later, 3)
    assert sum(result["granted"] for result in results) == 20
    for person in people:
        assert len(subscription_grants(app, person)) == 2
    assert_consistent(app)


def test_a_call_just_after_the_period_ends_is_paid_by_the_next_periods_credits(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """The refresh job comes every few minutes: between a period's end and its run, a user
    whose credits are all subscription credits was refused (402). The refusal grants the new
    period's credits at once, as the job would, and the call goes on; the job then finds
    nothing to do, and a user who is simply out of credits is still refused."""
    # 100 credits a month; the first period, granted when they joined, is over.
    person = person_factory(tier="free", joined_at=utcnow() - timedelta(days=40))
    add_price(app, "openai", "gpt-renewal", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-renewal")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}
    fake_providers.script("openai", Answer(usage=usage))

    sent = send(client, person, conversation)
    assert sent.status_code == 201, sent.get_json()
    assert run_job_at(app, "refresh", utcnow())["granted"] == 0
    charge = parse_credits(sent.get_json()["credits_charged"])
    assert charge == 200_000  # 100 in at 1 USD, 50 out at 2 USD per 1M tokens
    grants = subscription_grants(app, person)
    assert [(amount, remaining) for _period, amount, remaining in grants] == [
        (100 * CREDIT, 0),  # written off when it expired
        (100 * CREDIT, 100 * CREDIT - charge),
    ]
    with app.app_context():
        with write_transaction(db.session):
            ledger.adjust(
                db.session,
                account_id=person.account_id,
                amount=charge - 100 * CREDIT,
                reason="spent the rest",
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    assert_error(send(client, person, conversation), 402, "insufficient_credits")
    assert len(subscription_grants(app, person)) == 2
    assert len(fake_providers.calls("openai")) == 1
    assert_consistent(app)
