"""The metered call on its own, as any door calls it: a call need not belong to a conversation,
what the caller keeps commits with the charge or not at all, and `max_credits` bounds both the
hold and the charge."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from creditapp import accounts, ledger
from creditapp.api.metered import in_own_session
from creditapp.auth.models import User
from creditapp.billing import call
from creditapp.billing.models import UnbilledUsage, UsageRecord
from creditapp.database import DbSession, write_transaction
from creditapp.errors import MaxCreditsExceeded, ModelNotPriced, ProviderFailed, StreamTimedOut
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from creditapp.metering.providers import ChatMessage
from creditapp.money import parse_credits
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price

CR = 1_000_000
MODEL = "gpt-metered"
CONTEXT = ledger.AuditContext(actor_type="system", actor_id="tests")
# 1 USD per 1M tokens in, 2 out: 30 tokens in and 20 out cost 0.07 credits.
USAGE = {"prompt_tokens": 30, "completion_tokens": 20}


@pytest.fixture
def person(ctx: Flask, person_factory: Any) -> Person:
    add_price(ctx, "openai", MODEL, input="1", output="2")
    person: Person = person_factory(credits=10 * CR)
    return person


def _meter(app: Flask) -> call.Meter:
    return call.Meter(
        providers=app.extensions["providers"],
        hold_ttl=timedelta(minutes=5),
        clock=utcnow,
        silence=1.0,
        in_own_session=in_own_session(app),
        stream_deadline=timedelta(minutes=4),
    )


def _request(max_credits: int | None = None) -> call.MeteredRequest:
    return call.MeteredRequest(
        provider="openai",
        model=MODEL,
        system_prompt="Be brief.",
        messages=(ChatMessage("user", "Hello there"),),
        max_tokens=20,
        max_credits=max_credits,
    )


def _complete(
    app: Flask, person: Person, request: call.MeteredRequest, on_settled: Any = None
) -> call.Charged[Any]:
    return call.complete(
        db.session,
        call.MeteredCall(
            accounts.of_user(db.session, person.id),
            db.session.get_one(User, person.id),
            request,
            call.Origin("tests:metered"),
        ),
        meter=_meter(app),
        context=CONTEXT,
        on_settled=on_settled or (lambda _session, settled: settled.usage_id),
    )


def _streamed_call(person: Person) -> call.MeteredCall:
    return call.MeteredCall(
        person.account_id,
        db.session.get_one(User, person.id),
        _request(),
        call.Origin("tests:streamed"),
    )


def _available(person: Person) -> int:
    return ledger.balance(db.session, account_id=person.account_id, now=utcnow()).available


def test_a_call_without_a_conversation_is_held_charged_and_recorded(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    fake_providers.script("openai", Answer(text="Hello.", usage=USAGE))

    charged = _complete(ctx, person, _request())

    assert (charged.settled.text, charged.settled.credits_charged) == ("Hello.", 70_000)
    assert charged.settled.balance.available == 10 * CR - 70_000
    record = db.session.get_one(UsageRecord, charged.kept)
    assert (record.conversation_id, record.account_id, record.user_id) == (
        None,
        person.account_id,
        person.id,
    )
    assert (record.input_tokens, record.output_tokens, record.cost) == (30, 20, 70_000)
    assert record.credits_charged == 70_000
    hold = db.session.get_one(Hold, record.hold_id)
    assert (hold.status, hold.captured, hold.reference) == ("settled", 70_000, "tests:metered")
    assert _available(person) == 10 * CR - 70_000


def test_on_settled_runs_in_the_settle_transaction(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    fake_providers.script("openai", Answer(text="Hello.", usage=USAGE))
    seen: list[int] = []

    def fails(session: DbSession, settled: call.Settled) -> None:
        # The charge and its record are there to be seen, uncommitted.
        assert session.get(UsageRecord, settled.usage_id) is not None
        seen.append(settled.credits_charged)
        raise RuntimeError("the caller could not keep its part")

    with pytest.raises(RuntimeError):
        _complete(ctx, person, _request(), on_settled=fails)

    assert seen == [70_000]
    # Nothing charged: the settle was rolled back with the hook, the hold voided, the call kept.
    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 0
    hold = db.session.scalars(select(Hold)).one()
    assert (hold.status, hold.captured) == ("voided", 0)
    unbilled = db.session.scalars(select(UnbilledUsage)).one()
    assert (unbilled.hold_id, unbilled.cost, unbilled.conversation_id) == (hold.id, 70_000, None)
    assert "RuntimeError" in unbilled.error
    assert _available(person) == 10 * CR


def test_max_credits_refuses_a_call_that_could_cost_more_before_any_provider_call(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    with pytest.raises(MaxCreditsExceeded) as refused:
        _complete(ctx, person, _request(max_credits=1))

    assert (refused.value.status, refused.value.code) == (402, "max_credits_exceeded")
    assert refused.value.details["max_credits"] == "0.000001"
    assert fake_providers.calls("openai") == []
    assert db.session.scalar(select(func.count()).select_from(Hold)) == 0
    assert _available(person) == 10 * CR


def test_no_charge_exceeds_max_credits(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    with pytest.raises(MaxCreditsExceeded) as refused:
        _complete(ctx, person, _request(max_credits=1))
    worst_case = parse_credits(refused.value.details["required"])
    # The provider counts far more input than the hold's estimate: the cost is above the hold.
    fake_providers.script(
        "openai",
        Answer(text="A long reply.", usage={"prompt_tokens": 3000, "completion_tokens": 20}),
    )

    charged = _complete(ctx, person, _request(max_credits=worst_case))

    record = db.session.get_one(UsageRecord, charged.kept)
    assert record.cost == 3000 * 1_000 + 20 * 2_000 > worst_case
    assert charged.settled.held.amount == worst_case
    assert record.credits_charged == charged.settled.credits_charged == worst_case
    assert _available(person) == 10 * CR - worst_case


def test_a_streamed_call_without_a_conversation_is_relayed_and_charged_exactly(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    fake_providers.script("openai", Answer(text="Streamed words.", usage=USAGE))
    undone: list[str] = []

    def release(undo: call.Undo) -> None:
        undone.append("released")
        with write_transaction(db.session):
            undo(db.session)

    streaming = call.stream(
        db.session,
        _streamed_call(person),
        meter=_meter(ctx),
        context=CONTEXT,
        on_held=lambda _session, held: held.hold_id,
        on_settled=lambda _session, settled, hold_id: (hold_id, settled.usage_id),
        discard=lambda _hold_id: lambda _session: undone.append("discarded"),
        release=release,
    )
    events = list(streaming.events)

    text = "".join(event.text for event in events if isinstance(event, call.Delta))
    assert text == "Streamed words."
    finished = events[-1]
    assert isinstance(finished, call.Finished) and finished.failure is None
    assert finished.charged is not None and finished.charged.settled.credits_charged == 70_000
    hold_id, usage_id = finished.charged.kept
    assert hold_id == streaming.held.hold_id == streaming.started
    record = db.session.get_one(UsageRecord, usage_id)
    assert (record.conversation_id, record.ending, record.credits_charged) == (
        None,
        "completed",
        70_000,
    )
    assert undone == []  # charged: nothing of it is undone
    assert _available(person) == 10 * CR - 70_000


def test_a_stream_the_provider_fails_at_once_is_undone_in_the_release(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    fake_providers.script("openai", Answer(status=500))
    undone: list[str] = []

    def release(undo: call.Undo) -> None:
        with write_transaction(db.session):
            undo(db.session)
        undone.append("released")

    with pytest.raises(ProviderFailed):
        streaming = call.stream(
            db.session,
            _streamed_call(person),
            meter=_meter(ctx),
            context=CONTEXT,
            on_held=lambda _session, held: held.hold_id,
            on_settled=lambda _session, settled, _started: settled.usage_id,
            discard=lambda _hold_id: lambda _session: undone.append("discarded"),
            release=release,
        )
        list(streaming.events)

    assert undone == ["discarded", "released"]
    hold = db.session.scalars(select(Hold)).one()
    assert (hold.status, hold.captured) == ("voided", 0)
    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert _available(person) == 10 * CR


def test_a_model_priced_at_zero_is_refused_before_anything_is_held(
    app: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    """A row of the catalogue, or one older than the rule that a price charges something:
    refused as unpriced, in words that say why (a hold of nothing was a 400 about an amount
    the caller never sent)."""
    add_price(app, "openai", "gpt-free", input="0", output="0", cached_input="0")
    with pytest.raises(ModelNotPriced) as refused:
        _complete(app, person, replace(_request(), model="gpt-free"))
    assert str(refused.value) == (
        "openai:gpt-free is priced at zero: a call is never charged nothing, so it cannot be"
        " called."
    )
    assert db.session.scalar(select(func.count()).select_from(Hold)) == 0
    assert fake_providers.calls("openai") == []


def test_a_stream_at_its_deadline_before_its_first_word_is_charged_its_input(
    ctx: Flask, person: Person, fake_providers: FakeProviders
) -> None:
    """As a stream its client closed before the first word: the provider was asked, so its
    input is charged, and nothing is undone (a retry with its key replays it, it does not call
    the provider again)."""
    fake_providers.script("openai", Answer(text="Late words.", usage=USAGE, piece_delay=0.5))
    undone: list[str] = []
    streaming = call.stream(
        db.session,
        _streamed_call(person),
        meter=replace(_meter(ctx), stream_deadline=timedelta(0)),
        context=CONTEXT,
        on_held=lambda _session, held: held.hold_id,
        on_settled=lambda _session, settled, _started: settled.usage_id,
        discard=lambda _hold_id: lambda _session: undone.append("discarded"),
        release=lambda _undo: undone.append("released"),
    )

    def hold_status() -> str:
        db.session.rollback()  # a new snapshot each time
        return db.session.scalars(select(Hold.status)).one()

    deadline = time.monotonic() + 15
    while hold_status() == "pending":
        assert time.monotonic() < deadline, "the stream's deadline settled nothing"
        time.sleep(0.05)
    events = list(streaming.events)

    assert not any(isinstance(event, call.Delta) for event in events)
    finished = events[-1]
    assert isinstance(finished, call.Finished) and isinstance(finished.failure, StreamTimedOut)
    assert finished.charged is not None
    record = db.session.get_one(UsageRecord, finished.charged.kept)
    # Its input (estimated: OpenAI counts at the end), no output, 1 USD per 1M tokens in.
    assert (record.ending, record.output_tokens) == ("timed_out", 0)
    assert record.credits_charged == record.cost == record.input_tokens * 1_000 > 0
    assert undone == []
    assert _available(person) == 10 * CR - record.credits_charged
