"""A team member's cap (contract section 8, "Teams"): what one member may spend from the team's
account per UTC day or calendar month, reserved in the hold's own conditional update like the
balance, so that of messages sent at once exactly as many pass as the cap holds and the refused
ones never reach the provider; counted per period and recounted when the period changes;
whichever door the member calls through (a message naming the team, a key made for it)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from werkzeug.test import TestResponse

from creditapp import ledger
from creditapp.accounts.models import TeamMember
from creditapp.auth.models import User
from creditapp.auth.tokens import issue_access_token
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger import caps
from creditapp.ledger.models import LedgerEntry
from creditapp.money import format_credits
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    add_price,
    assert_consistent,
    assert_error,
    give_credits,
    new_team,
    send,
    start_conversation,
)
from tests.integration.live_server import call, live_server

CR = 1_000_000
MAX_TOKENS = 10
# Input is free and every output token costs a credit: a message holds MAX_TOKENS credits, and
# the scripted usage (MAX_TOKENS out) charges exactly its hold.
HOLD = MAX_TOKENS * CR
WHOLE_USAGE = {"prompt_tokens": 7, "completion_tokens": MAX_TOKENS}
TEAM_CREDITS = 1000 * CR


@dataclass(frozen=True)
class Team:
    id: int
    account_id: int


@pytest.fixture
def priced(app: Flask) -> None:
    add_price(app, "openai", "gpt-team", input="0", output="1000")


def make_team(
    app: Flask, owner: Person, *members: Person, cap: int | None, credits: int = TEAM_CREDITS
) -> Team:
    """A team of `owner` with these members, each capped at `cap` a month, granted `credits`."""
    with app.app_context():
        team_id, account_id = new_team(owner.id, *(member.id for member in members), cap=cap)
        give_credits(account_id, credits, "team credits")
        db.session.remove()
    return Team(team_id, account_id)


def change_member(
    client: FlaskClient, owner: Person, team: Team, member: Person, **fields: Any
) -> dict[str, Any]:
    changed = client.patch(
        f"/api/teams/{team.id}/members/{member.id}", json=fields, headers=owner.headers
    )
    assert changed.status_code == 200, changed.get_json()
    answer: dict[str, Any] = changed.get_json()
    return answer


def message(client: FlaskClient, member: Person, conversation: str, team: Team) -> TestResponse:
    return send(client, member, conversation, team_id=str(team.id), max_tokens=MAX_TOKENS)


def assert_refused(response: TestResponse, code: str) -> None:
    assert_error(response, 402, code)


def cap_id_of(app: Flask, team: Team, member: Person) -> int:
    with app.app_context():
        cap_id = db.session.scalar(
            select(TeamMember.cap_id).where(
                TeamMember.team_id == team.id, TeamMember.user_id == member.id
            )
        )
        db.session.remove()
    assert cap_id is not None
    return cap_id


def cap_standing(app: Flask, cap_id: int) -> caps.CapStanding:
    with app.app_context():
        standing = caps.standing(db.session, cap_id=cap_id, now=utcnow())
        db.session.remove()
    return standing


def shown_member(client: FlaskClient, owner: Person, team: Team, member: Person) -> Any:
    """The member as GET /api/teams/<id> shows them to the owner."""
    response = client.get(f"/api/teams/{team.id}", headers=owner.headers)
    assert response.status_code == 200, response.get_json()
    (shown,) = [m for m in response.get_json()["members"] if m["user_id"] == str(member.id)]
    return shown


def spent_shown(client: FlaskClient, owner: Person, team: Team, member: Person) -> str:
    return str(shown_member(client, owner, team, member)["spent_this_period"])


def charges_of(app: Flask, team: Team, member: Person) -> int:
    """What the ledger charged the team's account for the member's calls, in all."""
    with app.app_context():
        total = db.session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == team.account_id,
                LedgerEntry.type == "charge",
                LedgerEntry.user_id == member.id,
            )
        )
        db.session.remove()
    assert total is not None
    return -total


def in_transaction(app: Flask, operation: Any, **kwargs: Any) -> Any:
    with app.app_context():
        try:
            with write_transaction(db.session):
                return operation(db.session, context=TEST_CONTEXT, now=utcnow(), **kwargs)
        finally:
            db.session.remove()


def signed_in_for(app: Flask, person: Person, valid_for: timedelta) -> Person:
    """The person with an access token valid for `valid_for` from now: a test that moves the
    clock by days still calls as them."""
    with app.app_context():
        with write_transaction(db.session):
            user = db.session.get(User, person.id)
            assert user is not None
            token = issue_access_token(db.session, user, now=utcnow(), expires_in=valid_for)
        db.session.remove()
    return Person(person.id, person.email, person.account_id, token)


# As many messages pass as the cap holds


def test_of_twelve_messages_one_after_another_exactly_as_many_pass_as_the_cap_holds(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(), person_factory()
    fits = 5
    cap = fits * HOLD + HOLD - 1  # room for 5 holds and 9.999999 credits: not for a 6th
    team = make_team(app, owner, member, cap=cap)
    conversation = start_conversation(client, member, "openai", "gpt-team")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(12)))
    answers = [message(client, member, conversation, team) for _ in range(12)]
    assert [answer.status_code for answer in answers] == [201] * fits + [402] * (12 - fits)
    for refused in answers[fits:]:
        assert_refused(refused, "member_cap_reached")
    assert answers[fits].get_json()["error"]["details"] == {
        "required": "10",
        "limit": format_credits(cap),
        "spent": "50",
        "reserved": "0",
        "remaining": "9.999999",
    }
    assert len(fake_providers.calls("openai")) == fits
    cap_id = cap_id_of(app, team, member)
    assert cap_standing(app, cap_id) == caps.CapStanding(cap, fits * HOLD, 0)
    assert charges_of(app, team, member) == fits * HOLD
    assert spent_shown(client, owner, team, member) == "50"
    assert_consistent(app, [team.account_id])


@pytest.mark.postgres_only
@pytest.mark.real_clock
@pytest.mark.parametrize("fits", [1, 6, 11])
def test_of_twelve_messages_at_once_exactly_as_many_pass_as_the_cap_holds(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    fits: int,
) -> None:
    calls = 12
    owner, member = person_factory(), person_factory()
    # Room for `fits` holds, and 9.999999 credits more: not for one more. The team could pay
    # for every message: only the cap refuses.
    cap = fits * HOLD + HOLD - 1
    team = make_team(app, owner, member, cap=cap)
    cap_id = cap_id_of(app, team, member)
    conversations = [start_conversation(client, member, "openai", "gpt-team") for _ in range(calls)]
    # The provider answers only once every refused message has been answered: the holds of the
    # messages that pass are all open at once when the others are refused.
    answer_now = threading.Event()
    fake_providers.script(
        "openai", *(Answer(usage=WHOLE_USAGE, gate=answer_now) for _ in range(calls))
    )
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        **fake_providers.base_urls(),
        # The held calls wait for the test: no provider timeout may end them first.
        "PROVIDER_TIMEOUT_SECONDS": "60",
    }
    body = json.dumps({"content": "Hi", "max_tokens": MAX_TOKENS, "team_id": str(team.id)})
    # Threads enough in each worker for every message: none waits in a queue behind held ones.
    with live_server(env, workers=2, threads=calls) as base:
        barrier = threading.Barrier(calls)

        def one(index: int) -> tuple[int, dict[str, Any]]:
            barrier.wait(timeout=60)
            status, _headers, answer = call(
                "POST",
                f"{base}/api/conversations/{conversations[index]}/messages",
                member.token,
                body.encode(),
                headers={"Idempotency-Key": f"burst-{index}"},
            )
            return int(status), json.loads(answer)

        with ThreadPoolExecutor(max_workers=calls) as pool:
            pending = [pool.submit(one, index) for index in range(calls)]
            refused_first = []
            for future in as_completed(pending, timeout=60):
                refused_first.append(future.result())
                if len(refused_first) == calls - fits:
                    break
            assert [status for status, _ in refused_first] == [402] * (calls - fits)
            # Every passing message holds its worst case, none settled: the cap is full.
            assert cap_standing(app, cap_id) == caps.CapStanding(cap, 0, fits * HOLD)
            answer_now.set()
            answers = [future.result(timeout=60) for future in pending]

    assert sorted(status for status, _ in answers) == [201] * fits + [402] * (calls - fits)
    refused = [answer["error"]["code"] for status, answer in answers if status == 402]
    assert refused == ["member_cap_reached"] * (calls - fits)
    assert len(fake_providers.calls("openai")) == fits
    assert cap_standing(app, cap_id) == caps.CapStanding(cap, fits * HOLD, 0)
    assert charges_of(app, team, member) == fits * HOLD
    assert spent_shown(client, owner, team, member) == str(fits * MAX_TOKENS)
    assert_consistent(app, [team.account_id])


# Members and the team's balance


def test_each_member_is_held_to_their_own_cap_and_all_to_the_team_balance(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, frugal, spender = person_factory(), person_factory(), person_factory()
    team = make_team(app, owner, frugal, spender, cap=None, credits=45 * CR)
    change_member(client, owner, team, frugal, cap="20")
    change_member(client, owner, team, spender, cap="40")
    frugal_talk = start_conversation(client, frugal, "openai", "gpt-team")
    spender_talk = start_conversation(client, spender, "openai", "gpt-team")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(4)))

    assert [message(client, frugal, frugal_talk, team).status_code for _ in range(2)] == [201] * 2
    assert_refused(message(client, frugal, frugal_talk, team), "member_cap_reached")
    # The frugal member's full cap does not stop the other, who may spend 40.
    assert [message(client, spender, spender_talk, team).status_code for _ in range(2)] == [201] * 2
    # 20 spent of 40, but the team has 5 left: the balance refuses, for everyone.
    assert_refused(message(client, spender, spender_talk, team), "insufficient_credits")
    assert_refused(
        message(client, owner, start_conversation(client, owner, "openai", "gpt-team"), team),
        "insufficient_credits",
    )
    assert len(fake_providers.calls("openai")) == 4

    assert (
        spent_shown(client, owner, team, frugal),
        spent_shown(client, owner, team, spender),
    ) == (
        "20",
        "20",
    )
    assert (charges_of(app, team, frugal), charges_of(app, team, spender)) == (20 * CR, 20 * CR)
    balance = client.get(f"/api/teams/{team.id}", headers=owner.headers).get_json()
    assert (balance["balance"], balance["reserved"], balance["available"]) == ("5", "0", "5")
    assert_consistent(app, [team.account_id])


# A team key: its own limit and its owner's member cap


def test_a_team_key_is_held_to_its_limit_and_to_the_members_cap(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(), person_factory()
    team = make_team(app, owner, member, cap=35 * CR)

    def make_key(limit: str) -> Any:
        made = client.post(
            "/api/keys",
            json={"name": f"limit {limit}", "team_id": str(team.id), "limit": limit},
            headers={**member.headers, "Idempotency-Key": f"key-{limit}"},
        )
        assert made.status_code == 201, made.get_json()
        assert made.get_json()["team_id"] == str(team.id)
        return made.get_json()

    def gateway(key: Any) -> TestResponse:
        return client.post(
            "/v1/chat/completions",
            json={
                "model": "openai/gpt-team",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": MAX_TOKENS,
            },
            headers={"Authorization": f"Bearer {key['key']}"},
        )

    def refused_by(response: TestResponse, code: str) -> None:
        assert response.status_code == 402, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] == code

    low, high = make_key("15"), make_key("100")
    conversation = start_conversation(client, member, "openai", "gpt-team")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(3)))

    assert gateway(low).status_code == 200
    # The key's 15 is lower than what the member has left (25 of 35): the key refuses.
    refused_by(gateway(low), "key_limit_reached")
    assert gateway(high).status_code == 200
    # A message from the chat counts in the same member cap.
    assert message(client, member, conversation, team).status_code == 201
    # 30 of the member's 35 spent: the member's cap refuses, though the key has 80 left.
    refused_by(gateway(high), "member_cap_reached")
    assert_refused(message(client, member, conversation, team), "member_cap_reached")
    assert len(fake_providers.calls("openai")) == 3

    spent = {
        key["id"]: client.get(f"/api/keys/{key['id']}", headers=member.headers).get_json()["spent"]
        for key in (low, high)
    }
    assert spent == {low["id"]: "10", high["id"]: "10"}
    assert spent_shown(client, owner, team, member) == "30"
    assert charges_of(app, team, member) == 30 * CR
    assert_consistent(app, [team.account_id])


# Periods


def _next_period_start(period: str, now: datetime) -> datetime:
    """The start of the UTC day or calendar month after the one after `now`'s: later than now
    whenever the suite's clock says it is."""
    start = caps.period_starts(now)[period]
    for _ in range(2):
        start = caps.period_starts(start + timedelta(days=32 if period == "month" else 1))[period]
    return start


@pytest.mark.parametrize("period", ["day", "month"])
def test_the_cap_starts_again_with_each_period(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    period: str,
) -> None:
    next_start = _next_period_start(period, utcnow())
    last_moment = next_start - timedelta(seconds=1)
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(3)))
    with time_machine.travel(last_moment - timedelta(minutes=5), tick=False) as traveller:
        add_price(app, "openai", "gpt-team", input="0", output="1000")
        owner, member = person_factory(), person_factory()
        team = make_team(app, owner, member, cap=20 * CR)
        if period == "day":
            assert (
                change_member(client, owner, team, member, cap_period="day")["cap_period"] == "day"
            )
        conversation = start_conversation(client, member, "openai", "gpt-team")
        assert [message(client, member, conversation, team).status_code for _ in range(2)] == [
            201
        ] * 2
        traveller.move_to(last_moment)
        assert_refused(message(client, member, conversation, team), "member_cap_reached")
        assert spent_shown(client, owner, team, member) == "20"

        traveller.move_to(next_start)
        assert spent_shown(client, owner, team, member) == "0"
        assert message(client, member, conversation, team).status_code == 201
        shown = shown_member(client, owner, team, member)
        assert (shown["cap"], shown["cap_period"], shown["spent_this_period"]) == (
            "20",
            period,
            "10",
        )
        assert cap_standing(app, cap_id_of(app, team, member)) == caps.CapStanding(
            20 * CR, 10 * CR, 0
        )
        assert_consistent(app, [team.account_id])
    assert len(fake_providers.calls("openai")) == 3
    assert charges_of(app, team, member) == 30 * CR


def test_a_new_cap_period_recounts_this_periods_charges(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    """Charges on the last day of one month, on the 2nd and the 3rd of the next: a day cap
    counts the 3rd's, a month cap the 2nd's and 3rd's, never the month before's."""
    month = _next_period_start("month", utcnow())
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(5)))
    with time_machine.travel(month - timedelta(hours=1), tick=False) as traveller:
        add_price(app, "openai", "gpt-team", input="0", output="1000")
        owner, member = person_factory(), person_factory()
        owner = signed_in_for(app, owner, timedelta(days=5))
        member = signed_in_for(app, member, timedelta(days=5))
        team = make_team(app, owner, member, cap=100 * CR)
        change_member(client, owner, team, member, cap_period="day")
        conversation = start_conversation(client, member, "openai", "gpt-team")

        def spend_at(moment: datetime, times: int) -> None:
            traveller.move_to(moment)
            for _ in range(times):
                assert message(client, member, conversation, team).status_code == 201

        spend_at(month - timedelta(minutes=30), 1)
        spend_at(month + timedelta(days=1, hours=9), 1)
        spend_at(month + timedelta(days=2, hours=9), 2)
        assert spent_shown(client, owner, team, member) == "20"

        as_month = change_member(client, owner, team, member, cap_period="month")
        assert (as_month["cap_period"], as_month["spent_this_period"]) == ("month", "30")
        # The recount binds: 30 spent this month and 10 more would pass 35.
        assert change_member(client, owner, team, member, cap="35")["spent_this_period"] == "30"
        assert_refused(message(client, member, conversation, team), "member_cap_reached")

        as_day = change_member(client, owner, team, member, cap_period="day")
        assert (as_day["cap_period"], as_day["spent_this_period"]) == ("day", "20")
        assert message(client, member, conversation, team).status_code == 201
        assert spent_shown(client, owner, team, member) == "30"
        assert_consistent(app, [team.account_id])
    assert len(fake_providers.calls("openai")) == 5
    assert charges_of(app, team, member) == 50 * CR


# A lowered cap, and drift


def test_a_cap_lowered_below_what_was_spent_refuses_new_calls_but_open_holds_settle(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(), person_factory()
    team = make_team(app, owner, member, cap=50 * CR)
    cap_id = cap_id_of(app, team, member)
    conversation = start_conversation(client, member, "openai", "gpt-team")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(2)))
    assert [message(client, member, conversation, team).status_code for _ in range(2)] == [201] * 2

    def hold() -> int:
        """A hold of the member's on the team, as a message in flight places it."""
        held = in_transaction(
            app,
            ledger.hold,
            account_id=team.account_id,
            amount=HOLD,
            ttl=timedelta(minutes=10),
            caps=(cap_id,),
            spender=member.id,
        )
        return int(held.hold_id)

    in_flight, abandoned = hold(), hold()
    lowered = change_member(client, owner, team, member, cap="15")
    assert (lowered["cap"], lowered["spent_this_period"], lowered["reserved"]) == ("15", "20", "20")
    assert_refused(message(client, member, conversation, team), "member_cap_reached")
    assert len(fake_providers.calls("openai")) == 2

    settled = in_transaction(app, ledger.settle, hold_id=in_flight, actual=HOLD)
    assert (settled.captured, settled.uncollected) == (HOLD, 0)
    voided = in_transaction(app, ledger.void, hold_id=abandoned)
    assert (voided.applied, voided.captured) == (True, 0)
    assert cap_standing(app, cap_id) == caps.CapStanding(15 * CR, 30 * CR, 0)
    assert spent_shown(client, owner, team, member) == "30"
    assert charges_of(app, team, member) == 30 * CR
    assert_refused(message(client, member, conversation, team), "member_cap_reached")
    assert_consistent(app, [team.account_id])


def test_reconciliation_names_a_member_cap_corrupted_behind_the_ledgers_back(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(), person_factory()
    team = make_team(app, owner, member, cap=50 * CR)
    cap_id = cap_id_of(app, team, member)
    conversation = start_conversation(client, member, "openai", "gpt-team")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(2)))
    assert [message(client, member, conversation, team).status_code for _ in range(2)] == [201] * 2
    assert_consistent(app)

    with app.app_context():
        with write_transaction(db.session):
            corrupted = db.session.execute(
                text("UPDATE spend_caps SET spent = spent - 1 WHERE id = :cap"), {"cap": cap_id}
            )
            assert corrupted.rowcount == 1  # type: ignore[attr-defined]
        found = ledger.reconcile(db.session)
        db.session.remove()
    assert found == [
        ledger.Drift(
            team.account_id,
            None,
            f"cap {cap_id}: spent == sum(captured this period)",
            20 * CR,
            20 * CR - 1,
            team_id=team.id,
        )
    ]
