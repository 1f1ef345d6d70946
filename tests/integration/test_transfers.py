"""Transfers from a member's personal account to their team (contract section 8, "Teams"): one
ledger operation, two entries' worth of sides and two audit records, moving exactly the amount
and never making credits last longer; replayed by its Idempotency-Key, refused above what is
available, and exact when twenty arrive at once."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from creditapp import ledger
from creditapp.accounts import teams
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Grant, LedgerEntry
from creditapp.money import parse_credits
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.helpers import (
    GRANT,
    assert_consistent,
    assert_error,
    new_team,
    scalar,
    until,
    waits_for_a_lock,
)

CR = 1_000_000


def transfer(
    client: FlaskClient, person: Person, team_id: int, amount: Any, *, key: str | None = None
) -> TestResponse:
    return client.post(
        f"/api/teams/{team_id}/transfers",
        json={"amount": amount},
        headers={**person.headers, "Idempotency-Key": key or secrets.token_hex(8)},
    )


def team_of(app: Flask, owner: Person, *members: Person) -> tuple[int, int]:
    """A committed team of `owner` with these (uncapped) members: its id and account id."""
    with app.app_context():
        made = new_team(owner.id, *(member.id for member in members))
        db.session.remove()
    return made


def balance_of(app: Flask, account_id: int, now: datetime | None = None) -> ledger.Balance:
    with app.app_context():
        found = ledger.balance(db.session, account_id=account_id, now=now or utcnow())
        db.session.remove()
    return found


def entries(app: Flask, account_id: int) -> list[tuple[str, int, int | None, str | None]]:
    """The account's ledger entries as (type, amount, user_id, reference), oldest first."""
    with app.app_context():
        rows = db.session.execute(
            select(LedgerEntry.type, LedgerEntry.amount, LedgerEntry.user_id, LedgerEntry.reference)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.seq)
        ).all()
        db.session.remove()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def audit_actions(app: Flask, account_id: int) -> list[str]:
    with app.app_context():
        actions = list(
            db.session.scalars(
                select(AuditRecord.action)
                .where(AuditRecord.account_id == account_id)
                .order_by(AuditRecord.id)
            )
        )
        db.session.remove()
    return actions


def transfer_audits(app: Flask) -> list[tuple[str, int | None, int | None, int | None, str]]:
    """Every transfer's audit records as (action, account, balance before and after, the
    member named), oldest first."""
    with app.app_context():
        records = db.session.scalars(
            select(AuditRecord)
            .where(AuditRecord.action.in_(["transfer_out", "transfer_in"]))
            .order_by(AuditRecord.id)
        ).all()
        found = [
            (
                record.action,
                record.account_id,
                record.balance_before,
                record.balance_after,
                record.details["user_id"],
            )
            for record in records
        ]
        db.session.remove()
    return found


def rows_written(app: Flask) -> tuple[int, int, int]:
    """How many ledger entries, audit records and grants there are."""
    return tuple(  # type: ignore[return-value]
        scalar(app, select(func.count()).select_from(model))
        for model in (LedgerEntry, AuditRecord, Grant)
    )


def test_a_transfer_moves_exactly_its_amount_as_one_operation(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner, member = person_factory(), person_factory(credits=10 * CR)
    team_id, team_account = team_of(app, owner, member)

    moved = transfer(client, member, team_id, "3.5")

    assert moved.status_code == 201, moved.get_json()
    assert moved.get_json() == {
        "amount": "3.5",
        "team": {"balance": "3.5", "reserved": "0", "available": "3.5"},
        "personal": {"balance": "6.5", "reserved": "0", "available": "6.5"},
    }
    assert balance_of(app, member.account_id) == ledger.Balance(6_500_000, 0)
    assert balance_of(app, team_account) == ledger.Balance(3_500_000, 0)
    personal_side = [row for row in entries(app, member.account_id) if row[0] != "grant"]
    assert personal_side == [("transfer_out", -3_500_000, member.id, f"team:{team_id}")]
    assert entries(app, team_account) == [
        ("transfer_in", 3_500_000, member.id, f"user:{member.id}")
    ]
    # One audit record on each side, each with the balance it moved.
    assert audit_actions(app, member.account_id) == ["grant", "transfer_out"]
    assert audit_actions(app, team_account) == ["team_created", "team_member_added", "transfer_in"]
    assert transfer_audits(app) == [
        ("transfer_out", member.account_id, 10 * CR, 6_500_000, str(member.id)),
        ("transfer_in", team_account, 0, 3_500_000, str(member.id)),
    ]
    # What either side shows through the API.
    seen = client.get(f"/api/teams/{team_id}", headers=owner.headers).get_json()
    assert (seen["balance"], seen["available"]) == ("3.5", "3.5")
    assert client.get("/api/credit/balance", headers=member.headers).get_json()["balance"] == "6.5"
    [out] = client.get(
        "/api/credit/transactions?type=transfer_out", headers=member.headers
    ).get_json()["items"]
    assert (out["amount"], out["balance_after"], out["user_id"]) == ("-3.5", "6.5", str(member.id))
    assert_consistent(app, [member.account_id, team_account])


def test_a_transfer_drawn_from_several_grants_has_an_entry_per_grant_summing_to_its_amount(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    owner = person_factory(credits=1 * CR)
    team_id, team_account = team_of(app, owner)
    granted = client.post(
        GRANT,
        json={"user_id": str(owner.id), "amount": "2", "reason": "more"},
        headers=admin.headers,
    )
    assert granted.status_code == 201, granted.get_json()

    assert transfer(client, owner, team_id, "2.5").status_code == 201

    out = [row for row in entries(app, owner.account_id) if row[0] == "transfer_out"]
    assert len(out) == 2 and sum(row[1] for row in out) == -2_500_000
    assert {row[2] for row in out} == {owner.id}
    arrived = entries(app, team_account)
    assert sum(row[1] for row in arrived) == 2_500_000
    assert {(row[0], row[2]) for row in arrived} == {("transfer_in", owner.id)}
    # One audit record on each side, however many entries.
    assert audit_actions(app, owner.account_id).count("transfer_out") == 1
    assert audit_actions(app, team_account) == ["team_created", "transfer_in"]
    assert balance_of(app, owner.account_id) == ledger.Balance(500_000, 0)
    assert balance_of(app, team_account) == ledger.Balance(2_500_000, 0)
    assert_consistent(app, [owner.account_id, team_account])


def _team_grants(app: Flask, account_id: int) -> list[tuple[str, int, datetime | None]]:
    with app.app_context():
        rows = db.session.execute(
            select(Grant.source, Grant.amount, Grant.expires_at)
            .where(Grant.account_id == account_id)
            .order_by(Grant.id)
        ).all()
        db.session.remove()
    return [(row[0], row[1], row[2]) for row in rows]


def test_transferred_credits_keep_their_expiry(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    # Never-expiring credits are drawn last: the expiring ones go first, soonest first.
    member, owner = person_factory(credits=10 * CR), person_factory()
    team_id, team_account = team_of(app, owner, member)
    soon = (utcnow() + timedelta(days=5)).replace(microsecond=0)
    later = (utcnow() + timedelta(days=20)).replace(microsecond=0)
    for amount, expires_at in (("2", soon), ("4", later)):
        granted = client.post(
            GRANT,
            json={
                "user_id": str(member.id),
                "amount": amount,
                "reason": "expiring",
                "expires_at": expires_at.isoformat(),
            },
            headers=admin.headers,
        )
        assert granted.status_code == 201, granted.get_json()

    # From one grant: one team grant with its expiry.
    assert transfer(client, member, team_id, "1").status_code == 201
    assert _team_grants(app, team_account) == [("transfer", 1 * CR, soon)]
    # From two grants with different expiries: two team grants, each with its own.
    assert transfer(client, member, team_id, "4").status_code == 201
    assert _team_grants(app, team_account) == [
        ("transfer", 1 * CR, soon),
        ("transfer", 1 * CR, soon),
        ("transfer", 3 * CR, later),
    ]
    # The personal account's never-expiring credits were not touched.
    assert balance_of(app, member.account_id) == ledger.Balance(11 * CR, 0)
    # Moved credits expire when they would have: the team's last no longer.
    assert balance_of(app, team_account, soon + timedelta(seconds=1)) == ledger.Balance(3 * CR, 0)
    assert balance_of(app, team_account, later + timedelta(seconds=1)) == ledger.Balance(0, 0)
    assert_consistent(app, [member.account_id, team_account])


def test_a_replayed_transfer_answers_the_same_and_moves_nothing_more(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner = person_factory(credits=10 * CR)
    team_id, team_account = team_of(app, owner)
    first = transfer(client, owner, team_id, "4", key="fund-once")
    assert first.status_code == 201
    written = rows_written(app)

    again = transfer(client, owner, team_id, "4", key="fund-once")

    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert rows_written(app) == written
    assert balance_of(app, owner.account_id) == ledger.Balance(6 * CR, 0)
    assert balance_of(app, team_account) == ledger.Balance(4 * CR, 0)
    # The same key with another amount is another request: refused, nothing moved.
    assert_error(
        transfer(client, owner, team_id, "5", key="fund-once"), 409, "idempotency_key_reused"
    )
    assert rows_written(app) == written


def test_a_transfer_without_an_idempotency_key_is_refused(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner = person_factory(credits=10 * CR)
    team_id, _team_account = team_of(app, owner)
    written = rows_written(app)
    refused = client.post(
        f"/api/teams/{team_id}/transfers", json={"amount": "1"}, headers=owner.headers
    )
    error = assert_error(refused, 400, "validation_error")
    assert set(error["details"]) == {"Idempotency-Key"}
    assert rows_written(app) == written


def test_a_transfer_above_what_is_available_is_refused_and_writes_nothing(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner = person_factory(credits=5 * CR)
    team_id, team_account = team_of(app, owner)
    # A call in flight holds 2 of the 5 credits: 3 are available.
    with app.app_context():
        with write_transaction(db.session):
            ledger.hold(
                db.session,
                account_id=owner.account_id,
                amount=2 * CR,
                ttl=timedelta(minutes=10),
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    written = rows_written(app)

    for above in ("3.000001", "4", "5"):
        assert_error(transfer(client, owner, team_id, above), 402, "insufficient_credits")
    assert rows_written(app) == written
    assert balance_of(app, owner.account_id) == ledger.Balance(5 * CR, 2 * CR)
    assert balance_of(app, team_account) == ledger.Balance(0, 0)

    exactly = transfer(client, owner, team_id, "3")
    assert exactly.status_code == 201, exactly.get_json()
    assert exactly.get_json()["personal"] == {"balance": "2", "reserved": "2", "available": "0"}
    assert_consistent(app, [owner.account_id, team_account])


@pytest.mark.parametrize("amount", ["0", 0, "-1", -1, "1.0000001", "0.0000001", "abc", None, ""])
def test_a_bad_amount_is_refused_naming_it(
    app: Flask, client: FlaskClient, person_factory: Any, amount: Any
) -> None:
    owner = person_factory(credits=10 * CR)
    team_id, team_account = team_of(app, owner)
    written = rows_written(app)
    error = assert_error(transfer(client, owner, team_id, amount), 400, "validation_error")
    assert list(error["details"]) == ["amount"]
    assert rows_written(app) == written
    assert balance_of(app, team_account) == ledger.Balance(0, 0)


def test_a_transfer_into_a_team_one_is_not_in_is_not_found(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner, stranger = person_factory(), person_factory(credits=10 * CR)
    team_id, _team_account = team_of(app, owner)
    written = rows_written(app)
    assert_error(transfer(client, stranger, team_id, "1"), 404, "not_found")
    assert_error(transfer(client, stranger, team_id + 1000, "1"), 404, "not_found")
    assert rows_written(app) == written
    assert balance_of(app, stranger.account_id) == ledger.Balance(10 * CR, 0)


@pytest.mark.parametrize("fits", [1, 7, 19])
def test_of_twenty_transfers_at_once_exactly_as_many_pass_as_the_balance_holds(
    app: Flask, person_factory: Any, fits: int
) -> None:
    at_once = 20
    each = 3 * CR
    # Room for `fits` transfers and 2.999999 credits more: not for one more.
    left_over = each - 1
    owner, member = person_factory(), person_factory(credits=fits * each + left_over)
    team_id, team_account = team_of(app, owner, member)
    barrier = threading.Barrier(at_once)

    def one(_index: int) -> TestResponse:
        own_client = app.test_client()
        barrier.wait(timeout=60)
        return transfer(own_client, member, team_id, "3")

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        answers = list(pool.map(one, range(at_once)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * fits + [402] * (at_once - fits)
    refused = [answer for answer in answers if answer.status_code == 402]
    assert {answer.get_json()["error"]["code"] for answer in refused} == {"insufficient_credits"}
    # Each transfer saw the one before it: the balances after are every step down, once each.
    passed = [answer.get_json() for answer in answers if answer.status_code == 201]
    assert sorted(parse_credits(body["personal"]["balance"]) for body in passed) == [
        left_over + step * each for step in range(fits)
    ]
    assert sorted(parse_credits(body["team"]["balance"]) for body in passed) == [
        step * each for step in range(1, fits + 1)
    ]
    assert balance_of(app, member.account_id) == ledger.Balance(left_over, 0)
    assert balance_of(app, team_account) == ledger.Balance(fits * each, 0)
    out = [row for row in entries(app, member.account_id) if row[0] == "transfer_out"]
    assert sum(row[1] for row in out) == -fits * each
    assert audit_actions(app, team_account).count("transfer_in") == fits
    assert_consistent(app, [member.account_id, team_account])
    assert_consistent(app)


@pytest.mark.postgres_only
def test_a_transfer_and_the_removal_of_its_member_run_one_after_the_other(
    app: Flask, person_factory: Any
) -> None:
    """The transfer holds the team's row from its membership check to its commit: a removal
    of the member waits for it (the credits moved while they were a member), where it could
    commit in between and the credits went to a team they were no longer in."""
    owner, member = person_factory(), person_factory(credits=10 * CR)
    team_id, team_account = team_of(app, owner, member)
    moved, release = threading.Event(), threading.Event()

    def fund() -> None:
        with app.app_context():
            with write_transaction(db.session):
                teams.fund(
                    db.session,
                    team_id=team_id,
                    user_id=member.id,
                    personal_account=member.account_id,
                    amount=CR,
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
                moved.set()
                release.wait(10)
            db.session.remove()

    def remove() -> None:
        with app.app_context():
            with write_transaction(db.session):
                teams.remove_member(
                    db.session,
                    team_id=team_id,
                    actor_id=owner.id,
                    user_id=member.id,
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
            db.session.remove()

    funding = threading.Thread(target=fund)
    funding.start()
    try:
        assert moved.wait(10)
        removing = threading.Thread(target=remove)
        removing.start()
        with app.app_context():
            assert until(waits_for_a_lock), "the removal did not wait for the transfer"
        assert removing.is_alive()
    finally:
        release.set()
        funding.join()
    removing.join()
    assert balance_of(app, team_account) == ledger.Balance(CR, 0)
