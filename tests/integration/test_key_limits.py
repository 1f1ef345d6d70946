"""An API key's `limit` per `limit_period` (contract section 8): `spent + reserved <= limit` when
each hold is placed, enforced in the hold's own transaction, so that of calls made at once exactly
as many pass as the limit holds; spent counted per UTC day, ISO week or calendar month (or
ever); reservations released by a void or an expiry, and a late settle counted."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from creditapp import ledger
from creditapp.auth.models import ApiKey
from creditapp.database import write_transaction
from creditapp.errors import InvalidApiKey, KeyLimitReached
from creditapp.extensions import db
from creditapp.ledger import caps
from creditapp.ledger.models import Hold, LedgerEntry
from creditapp.money import format_credits
from tests.conftest import TEST_CONTEXT, Person, create_person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_consistent, run_job_at
from tests.integration.live_server import live_server

CR = 1_000_000
MODEL = "openai/gpt-capped"
MAX_TOKENS = 10
# Input is free and every output token costs a credit: a call holds MAX_TOKENS credits, and the
# scripted usage (MAX_TOKENS out) charges exactly its hold.
HOLD = MAX_TOKENS * CR
WHOLE_USAGE = {"prompt_tokens": 7, "completion_tokens": MAX_TOKENS}
# More programs for a longer search: KEY_CAP_MACHINE_EXAMPLES=500.
MACHINE_EXAMPLES = int(os.environ.get("KEY_CAP_MACHINE_EXAMPLES", 50))
CALL = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS}


@pytest.fixture
def priced(app: Flask) -> None:
    add_price(app, "openai", "gpt-capped", input="0", output="1000")


def make_key(client: FlaskClient, person: Person, limit: str | None, period: str = "total") -> Any:
    response = client.post(
        "/api/keys",
        json={"name": "capped", "limit": limit, "limit_period": period},
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def call(client: FlaskClient, key: str) -> TestResponse:
    return client.post(
        "/v1/chat/completions", json=CALL, headers={"Authorization": f"Bearer {key}"}
    )


def assert_limit_reached(response: TestResponse) -> None:
    assert response.status_code == 402, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert (error["code"], error["type"]) == ("key_limit_reached", "insufficient_credits")


def spent(client: FlaskClient, person: Person, key_id: str) -> str:
    response = client.get(f"/api/keys/{key_id}", headers=person.headers)
    assert response.status_code == 200
    return str(response.get_json()["spent"])


def cap_of(app: Flask, key_id: str, now: datetime | None = None) -> caps.CapStanding:
    with app.app_context():
        cap_id = db.session.scalar(select(ApiKey.cap_id).where(ApiKey.id == int(key_id)))
        standing = caps.standing(db.session, cap_id=cap_id, now=now or utcnow())
        db.session.remove()
    return standing


def charges(app: Flask, account_id: int) -> int:
    """What the ledger charged the account, in all."""
    with app.app_context():
        total = db.session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == account_id, LedgerEntry.type == "charge"
            )
        )
        db.session.remove()
    return -int(total)


def hold_directly(app: Flask, person: Person, key_id: str, amount: int, now: datetime) -> int:
    """A hold on the key's cap, as a call in flight places it."""
    with app.app_context():
        try:
            with write_transaction(db.session):
                cap_id = db.session.scalar(select(ApiKey.cap_id).where(ApiKey.id == int(key_id)))
                held = ledger.hold(
                    db.session,
                    account_id=person.account_id,
                    amount=amount,
                    ttl=timedelta(minutes=10),
                    context=TEST_CONTEXT,
                    now=now,
                    caps=(cap_id,),
                )
            return held.hold_id
        finally:
            db.session.remove()


def resolve_directly(app: Flask, operation: Any, now: datetime, **kwargs: Any) -> Any:
    with app.app_context():
        try:
            with write_transaction(db.session):
                return operation(db.session, context=TEST_CONTEXT, now=now, **kwargs)
        finally:
            db.session.remove()


# Calls that fit, and the first that does not


def test_exactly_as_many_calls_pass_as_the_limit_holds(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "35")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(4)))
    for _ in range(3):
        passed = call(client, key["key"])
        assert passed.status_code == 200, passed.get_json()
        assert passed.headers["X-Credits-Held"] == passed.headers["X-Credits-Charged"] == "10"
    assert_limit_reached(call(client, key["key"]))
    assert len(fake_providers.calls("openai")) == 3
    assert spent(client, person, key["id"]) == "30"
    assert cap_of(app, key["id"]) == caps.CapStanding(35 * CR, 30 * CR, 0)
    assert charges(app, person.account_id) == 30 * CR
    assert_consistent(app, [person.account_id])


def test_no_more_holds_are_placed_at_once_than_the_limit_holds(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "35")
    now = utcnow()
    held = [hold_directly(app, person, key["id"], HOLD, now) for _ in range(3)]
    with pytest.raises(KeyLimitReached):
        hold_directly(app, person, key["id"], HOLD, now)
    assert_limit_reached(call(client, key["key"]))
    assert fake_providers.calls("openai") == []
    assert cap_of(app, key["id"]) == caps.CapStanding(35 * CR, 0, 30 * CR)
    # A hold that fits what is left still passes: 30 reserved + 5 = 35.
    held.append(hold_directly(app, person, key["id"], 5 * CR, now))
    for hold_id in held:
        resolve_directly(app, ledger.void, utcnow(), hold_id=hold_id)
    assert cap_of(app, key["id"]) == caps.CapStanding(35 * CR, 0, 0)


def test_a_call_refused_by_the_limit_frees_its_idempotency_key(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "5")
    headers = {"Authorization": f"Bearer {key['key']}", "Idempotency-Key": "retry-me"}
    assert_limit_reached(client.post("/v1/chat/completions", json=CALL, headers=headers))
    raised = client.patch(f"/api/keys/{key['id']}", json={"limit": "10"}, headers=person.headers)
    assert raised.status_code == 200
    fake_providers.script("openai", Answer(usage=WHOLE_USAGE))
    retried = client.post("/v1/chat/completions", json=CALL, headers=headers)
    assert retried.status_code == 200, retried.get_json()
    assert "Idempotent-Replayed" not in retried.headers
    assert cap_of(app, key["id"]) == caps.CapStanding(10 * CR, 10 * CR, 0)


def test_a_call_never_takes_its_key_past_the_limit(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "12", "day")
    over = {"prompt_tokens": 3, "completion_tokens": MAX_TOKENS + 5}
    fake_providers.script("openai", Answer(usage=over))
    answered = call(client, key["key"])
    assert answered.status_code == 200
    standing = cap_of(app, key["id"])
    assert standing.spent + standing.reserved <= 12 * CR
    assert standing.spent == charges(app, person.account_id)


def test_a_lowered_limit_refuses_the_next_call_that_does_not_fit(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "100", "day")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(3)))
    assert call(client, key["key"]).status_code == 200

    def limit(to: str) -> None:
        changed = client.patch(f"/api/keys/{key['id']}", json={"limit": to}, headers=person.headers)
        assert changed.status_code == 200, changed.get_json()
        assert (changed.get_json()["limit"], changed.get_json()["spent"]) == (to, "10")

    limit("19.999999")
    assert_limit_reached(call(client, key["key"]))
    assert len(fake_providers.calls("openai")) == 1
    limit("20")
    assert call(client, key["key"]).status_code == 200
    assert spent(client, person, key["id"]) == "20"
    assert_limit_reached(call(client, key["key"]))
    assert cap_of(app, key["id"]) == caps.CapStanding(20 * CR, 20 * CR, 0)


def test_a_failed_call_releases_its_reservation_and_spends_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "25", "month")
    fake_providers.script("openai", Answer(usage=WHOLE_USAGE), Answer(status=500))
    assert call(client, key["key"]).status_code == 200
    failed = call(client, key["key"])
    assert failed.status_code == 502, failed.get_json()
    assert failed.get_json()["error"]["code"] == "provider_error"
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 10 * CR, 0)
    assert spent(client, person, key["id"]) == "10"
    assert charges(app, person.account_id) == 10 * CR
    # The released reservation is room again: 10 + 10 fits in 25.
    fake_providers.script("openai", Answer(usage=WHOLE_USAGE))
    assert call(client, key["key"]).status_code == 200


def test_an_expired_hold_releases_its_reservation_and_a_late_settle_counts(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "25", "day")
    now = utcnow()
    in_flight = hold_directly(app, person, key["id"], 20 * CR, now)
    assert_limit_reached(call(client, key["key"]))

    run_job_at(app, "expire-holds", now + timedelta(minutes=9))  # not yet expired
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 0, 20 * CR)
    run_job_at(app, "expire-holds", now + timedelta(minutes=10))
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 0, 0)
    assert spent(client, person, key["id"]) == "0"

    late = resolve_directly(
        app, ledger.settle, now + timedelta(minutes=11), hold_id=in_flight, actual=17 * CR
    )
    assert (late.applied, late.late, late.captured) == (True, True, 17 * CR)
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 17 * CR, 0)
    assert spent(client, person, key["id"]) == "17"
    assert charges(app, person.account_id) == 17 * CR
    # 17 spent + 10 would pass 25.
    assert_limit_reached(call(client, key["key"]))
    assert fake_providers.calls("openai") == []
    assert_consistent(app, [person.account_id])


def test_a_key_without_a_limit_is_never_refused_and_counts_what_it_spent(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=25 * CR)
    key = make_key(client, person, None, "day")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(2)))
    assert [call(client, key["key"]).status_code for _ in range(2)] == [200, 200]
    assert spent(client, person, key["id"]) == "20"
    assert cap_of(app, key["id"]) == caps.CapStanding(None, 20 * CR, 0)
    # What stops the third call is the balance (5 credits left), not the key.
    refused = call(client, key["key"])
    assert refused.status_code == 402
    assert refused.get_json()["error"]["code"] == "insufficient_credits"
    assert cap_of(app, key["id"]) == caps.CapStanding(None, 20 * CR, 0)


def test_a_stream_and_a_replayed_call_count_once_each(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "25", "week")
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(3)))
    streamed = client.post(
        "/v1/chat/completions",
        json={**CALL, "stream": True},
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert streamed.status_code == 200 and streamed.headers["X-Credits-Held"] == "10"
    events = [line.removeprefix("data: ") for line in streamed.get_data(as_text=True).split("\n\n")]
    assert events[-2:] == ["[DONE]", ""]
    assert json.loads(events[-3])["usage"]["credits"] == "10"
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 10 * CR, 0)

    replayed = {"Authorization": f"Bearer {key['key']}", "Idempotency-Key": "one-call"}
    first = client.post("/v1/chat/completions", json=CALL, headers=replayed)
    again = client.post("/v1/chat/completions", json=CALL, headers=replayed)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert len(fake_providers.calls("openai")) == 2
    assert cap_of(app, key["id"]) == caps.CapStanding(25 * CR, 20 * CR, 0)
    assert spent(client, person, key["id"]) == "20"
    assert charges(app, person.account_id) == 20 * CR
    refused = client.post(
        "/v1/chat/completions",
        json={**CALL, "stream": True},
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert_limit_reached(refused)
    assert len(fake_providers.calls("openai")) == 2


# Periods: spent starts again at each UTC day, ISO week and calendar month; never for "total"

PERIODS = [
    # period, the last moment of one period, the first of the next (in UTC)
    ("day", datetime(2027, 3, 9, 23, 59, 59, tzinfo=UTC), datetime(2027, 3, 10, tzinfo=UTC)),
    # 2027-03-07 is a Sunday.
    ("week", datetime(2027, 3, 7, 23, 59, 59, tzinfo=UTC), datetime(2027, 3, 8, tzinfo=UTC)),
    ("month", datetime(2027, 3, 31, 23, 59, 59, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=UTC)),
    ("month", datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    ("total", datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(("period", "last_moment", "next_start"), PERIODS)
def test_spent_starts_again_with_each_period(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    period: str,
    last_moment: datetime,
    next_start: datetime,
) -> None:
    fake_providers.script("openai", *(Answer(usage=WHOLE_USAGE) for _ in range(4)))
    with time_machine.travel(last_moment - timedelta(minutes=5), tick=False) as traveller:
        add_price(app, "openai", "gpt-capped", input="0", output="1000")
        person = person_factory(credits=1000 * CR)
        key = make_key(client, person, "20", period)
        assert [call(client, key["key"]).status_code for _ in range(2)] == [200, 200]
        traveller.move_to(last_moment)
        assert_limit_reached(call(client, key["key"]))
        assert spent(client, person, key["id"]) == "20"

        traveller.move_to(next_start)
        if period == "total":
            assert spent(client, person, key["id"]) == "20"
            assert_limit_reached(call(client, key["key"]))
            assert cap_of(app, key["id"], next_start) == caps.CapStanding(20 * CR, 20 * CR, 0)
        else:
            assert spent(client, person, key["id"]) == "0"
            assert cap_of(app, key["id"], next_start) == caps.CapStanding(20 * CR, 0, 0)
            assert call(client, key["key"]).status_code == 200
            assert spent(client, person, key["id"]) == "10"
            assert cap_of(app, key["id"], next_start) == caps.CapStanding(20 * CR, 10 * CR, 0)
    assert charges(app, person.account_id) == (20 if period == "total" else 30) * CR


def test_a_charge_counts_in_the_period_it_is_settled_in(
    app: Flask, client: FlaskClient, person_factory: Any, priced: None
) -> None:
    person = person_factory(credits=1000 * CR)
    key = make_key(client, person, "25", "day")
    # Ten seconds before a midnight after the key was made (whenever the suite's clock says it
    # is now: a cap never moves its period back), and five after.
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=2)
    evening = midnight - timedelta(seconds=10)
    held = hold_directly(app, person, key["id"], 20 * CR, evening)
    assert cap_of(app, key["id"], evening) == caps.CapStanding(25 * CR, 0, 20 * CR)
    # The next day's spending starts from zero, but the open hold is still reserved.
    morning = midnight + timedelta(seconds=5)
    assert cap_of(app, key["id"], morning) == caps.CapStanding(25 * CR, 0, 20 * CR)
    with pytest.raises(KeyLimitReached):
        hold_directly(app, person, key["id"], 6 * CR, morning)
    resolve_directly(app, ledger.settle, morning, hold_id=held, actual=15 * CR)
    assert cap_of(app, key["id"], morning) == caps.CapStanding(25 * CR, 15 * CR, 0)
    assert cap_of(app, key["id"], morning + timedelta(days=1)) == caps.CapStanding(25 * CR, 0, 0)


# Twenty calls at once against a real server


def _post(base: str, key: str) -> tuple[int, dict[str, Any]]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(CALL),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _first(futures: list[Future[Any]], count: int, *, seconds: float) -> list[Future[Any]]:
    """The first `count` of `futures` to finish (within `seconds`)."""
    finished: list[Future[Any]] = []
    for future in as_completed(futures, timeout=seconds):
        finished.append(future)
        if len(finished) == count:
            break
    return finished


@pytest.mark.postgres_only
@pytest.mark.real_clock
@pytest.mark.parametrize("fits", [1, 7, 19])
def test_of_twenty_calls_at_once_exactly_as_many_pass_as_the_limit_holds(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
    fits: int,
) -> None:
    calls = 20
    person = person_factory(credits=1000 * CR)
    # Room for `fits` holds, and 9.999999 credits more: not for one more.
    limit = fits * HOLD + HOLD - 1
    key = make_key(client, person, format_credits(limit), "day")
    # The provider answers only once every refused call has been answered: the holds of the
    # calls that pass are all open at once when the others are refused.
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
    # Threads enough in each worker for every call: none waits in a worker's queue behind the
    # held ones.
    with live_server(env, workers=2, threads=calls) as base:
        barrier = threading.Barrier(calls)

        def one(_index: int) -> tuple[int, dict[str, Any]]:
            barrier.wait(timeout=60)
            return _post(base, key["key"])

        with ThreadPoolExecutor(max_workers=calls) as pool:
            pending = [pool.submit(one, index) for index in range(calls)]
            refused_first = [
                future.result() for future in _first(pending, calls - fits, seconds=60)
            ]
            assert [status for status, _body in refused_first] == [402] * (calls - fits)
            assert cap_of(app, key["id"]) == caps.CapStanding(limit, 0, fits * HOLD)
            answer_now.set()
            answers = [future.result(timeout=60) for future in pending]

    statuses = sorted(status for status, _body in answers)
    assert statuses == [200] * fits + [402] * (calls - fits), answers
    refused = [body["error"]["code"] for status, body in answers if status == 402]
    assert refused == ["key_limit_reached"] * (calls - fits)
    assert len(fake_providers.calls("openai")) == fits
    passed = [body for status, body in answers if status == 200]
    assert {body["usage"]["credits"] for body in passed} == {"10"}
    standing = cap_of(app, key["id"])
    assert (standing.spent, standing.reserved) == (fits * HOLD, 0)
    assert charges(app, person.account_id) == fits * HOLD
    assert spent(client, person, key["id"]) == str(fits * 10)
    assert_consistent(app, [person.account_id])


# Random programs of holds, settles, voids and expiries on one key

MACHINE_HOLD_TTL = timedelta(hours=2)


@dataclass
class ModelHold:
    amount: int
    expires_at: datetime


class KeyCapMachine(RuleBasedStateMachine):
    """One key with a daily limit: holds (refused exactly when they would not fit), settles of
    at most the hold (late ones too, after the expiry job released the hold: they capture only
    what room the limit has left), voids, expiries,
    and time moving across days; after every step the cap matches the holds: reserved is what
    the pending ones hold, spent what the settled ones captured today."""

    holds = Bundle("holds")
    LIMIT = 50 * CR

    def __init__(self, app: Flask, serial: list[int]):
        super().__init__()
        self.app = app
        serial[0] += 1
        self.serial = serial[0]
        self.now = datetime(2027, 3, 9, 20, 0, tzinfo=UTC)
        self.pending: dict[int, ModelHold] = {}
        self.expired: dict[int, ModelHold] = {}
        # (settled at, captured) of every settled hold.
        self.settled: list[tuple[datetime, int]] = []

    @initialize()
    def make_the_key(self) -> None:
        person = create_person(
            self.app, f"cap-{self.serial}@example.com", credits=100_000 * CR, joined_at=self.now
        )
        self.account_id = person.account_id
        with self.app.app_context():
            with write_transaction(db.session):
                self.cap_id = caps.open_cap(
                    db.session,
                    account_id=self.account_id,
                    kind="key",
                    ceiling=self.LIMIT,
                    period="day",
                    now=self.now,
                )
            db.session.remove()

    def _run(self, operation: Any, **kwargs: Any) -> Any:
        return resolve_directly(self.app, operation, self.now, **kwargs)

    def _spent_today(self) -> int:
        today = caps.period_starts(self.now)["day"]
        return sum(captured for at, captured in self.settled if at >= today)

    # Amounts near the limit's fractions are likely, so that holds are refused as often as not.
    @rule(
        target=holds,
        amount=st.sampled_from([CR, 10 * CR, 17 * CR, 25 * CR, 30 * CR])
        | st.integers(min_value=1, max_value=30 * CR),
    )
    def hold(self, amount: int) -> Any:
        fits = self._spent_today() + sum(h.amount for h in self.pending.values()) + amount
        try:
            held = self._run(
                ledger.hold,
                account_id=self.account_id,
                amount=amount,
                ttl=MACHINE_HOLD_TTL,
                caps=(self.cap_id,),
            )
        except KeyLimitReached as refused:
            assert fits > self.LIMIT
            assert refused.required == amount
            assert refused.details["spent"] == format_credits(self._spent_today())
            return multiple()
        assert fits <= self.LIMIT
        self.pending[held.hold_id] = ModelHold(amount, self.now + MACHINE_HOLD_TTL)
        standing = self._standing()
        assert standing.spent + standing.reserved <= self.LIMIT
        return held.hold_id

    @rule(hold_id=consumes(holds), share=st.fractions(min_value=0, max_value=1))
    def settle(self, hold_id: int, share: Any) -> None:
        late = hold_id in self.expired
        reserved = sum(h.amount for h in self.pending.values())
        held = (self.expired if late else self.pending).pop(hold_id)
        actual = int(held.amount * share)
        # The account has plenty; the cap lets a hold capture what it releases (nothing for a
        # late one, whose expiry released it) plus whatever room the limit has left.
        room = max(self.LIMIT - self._spent_today() - reserved, 0)
        captured = min(actual, (0 if late else held.amount) + room)
        outcome = self._run(ledger.settle, hold_id=hold_id, actual=actual)
        assert (outcome.applied, outcome.late, outcome.captured) == (True, late, captured)
        assert outcome.uncollected == actual - captured
        self.settled.append((self.now, captured))

    @rule(hold_id=consumes(holds))
    def void(self, hold_id: int) -> None:
        late = hold_id in self.expired
        (self.expired if late else self.pending).pop(hold_id)
        assert self._run(ledger.void, hold_id=hold_id).applied == (not late)

    @rule(later=st.sampled_from([timedelta(0), MACHINE_HOLD_TTL]))
    def expire_holds(self, later: timedelta) -> None:
        self.now += later
        run_job_at(self.app, "expire-holds", self.now)
        for hold_id, held in list(self.pending.items()):
            if held.expires_at <= self.now:
                self.expired[hold_id] = self.pending.pop(hold_id)

    @rule(seconds=st.sampled_from([1, 59, 600, 3600, 86_399]))
    def advance_time(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    def _standing(self) -> caps.CapStanding:
        with self.app.app_context():
            standing = caps.standing(db.session, cap_id=self.cap_id, now=self.now)
            db.session.remove()
        return standing

    @invariant()
    def the_cap_matches_its_holds(self) -> None:
        if not hasattr(self, "cap_id"):
            return
        standing = self._standing()
        reserved = sum(h.amount for h in self.pending.values())
        assert (standing.spent, standing.reserved) == (self._spent_today(), reserved)
        today = caps.period_starts(self.now)["day"]
        with self.app.app_context():
            pending, captured_today = db.session.execute(
                select(
                    func.coalesce(func.sum(Hold.amount).filter(Hold.status == "pending"), 0),
                    func.coalesce(
                        func.sum(Hold.captured).filter(
                            Hold.status == "settled", Hold.resolved_at >= today
                        ),
                        0,
                    ),
                ).where(Hold.account_id == self.account_id)
            ).one()
            db.session.remove()
        assert (int(pending), int(captured_today)) == (reserved, standing.spent)


def test_random_holds_settles_and_voids_keep_the_key_within_its_limit(app: Flask) -> None:
    serial = [0]
    run_state_machine_as_test(
        lambda: KeyCapMachine(app, serial),
        settings=settings(
            max_examples=MACHINE_EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.postgres_only
@pytest.mark.parametrize("new_ceiling", [None, 50 * CR], ids=["lifted", "raised"])
def test_a_hold_refused_by_a_ceiling_changed_meanwhile_is_tried_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch, new_ceiling: int | None
) -> None:
    """A reservation that matched no cap row locked none, so the ceiling can change before the
    refusal reads it (PostgreSQL): lifted, it read as no ceiling, a 500; raised, the call that
    fits now was refused. The hold is tried again against the cap as it is now."""
    now = utcnow()
    person = create_person(app, "cap-race@example.com", credits=100 * CR, joined_at=now)
    with app.app_context():
        with write_transaction(db.session):
            cap_id = caps.open_cap(
                db.session,
                account_id=person.account_id,
                kind="key",
                ceiling=5 * CR,
                period="day",
                now=now,
            )
        db.session.remove()
    sent_together = ledger.sql.LedgerSql.together
    changed: list[int | None] = []

    def together_then_the_ceiling_changes(self: Any, *queries: Any) -> Any:
        rows = sent_together(self, *queries)
        if not changed:  # the first reservation's round trip, before its refusal is read
            changed.append(new_ceiling)
            with app.app_context():
                with write_transaction(db.session):
                    caps.set_ceiling(db.session, cap_id=cap_id, ceiling=new_ceiling)
                db.session.remove()
        return rows

    monkeypatch.setattr(ledger.sql.LedgerSql, "together", together_then_the_ceiling_changes)
    held = resolve_directly(
        app,
        ledger.hold,
        now,
        account_id=person.account_id,
        amount=10 * CR,
        ttl=timedelta(minutes=10),
        caps=(cap_id,),
    )
    monkeypatch.undo()
    assert held.amount == 10 * CR
    with app.app_context():
        assert caps.standing(db.session, cap_id=cap_id, now=now).reserved == 10 * CR
        db.session.remove()
    assert_consistent(app, [person.account_id])


def test_a_hold_through_a_closed_key_is_refused_as_a_revoked_key_whatever_cap_is_older(
    app: Flask,
) -> None:
    """A team key's owner removed while their call is held: both of its caps are closed, and
    the member's, older, answered "no such team" (404) where the key is revoked (401)."""
    now = utcnow()
    person = create_person(app, "closed-caps@example.com", credits=100 * CR, joined_at=now)
    with app.app_context():
        with write_transaction(db.session):
            opened = [
                caps.open_cap(
                    db.session,
                    account_id=person.account_id,
                    kind=kind,
                    ceiling=None,
                    period="month",
                    now=now,
                )
                for kind in ("member", "key")
            ]
            for cap_id in opened:
                caps.close(db.session, cap_id=cap_id, now=now)
        db.session.remove()
    with pytest.raises(InvalidApiKey):
        resolve_directly(
            app,
            ledger.hold,
            now,
            account_id=person.account_id,
            amount=CR,
            ttl=timedelta(minutes=10),
            caps=tuple(opened),
        )
