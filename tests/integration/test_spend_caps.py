"""Spending caps in the ledger, at the edges the HTTP tests cannot place exactly: statements
arriving with an older clock than the cap's newest, a settle that outlived its hold, a ceiling
lowered under an open hold."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.database import write_transaction
from creditapp.errors import InvalidApiKey, KeyLimitReached, NotFound
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from tests.conftest import TEST_CONTEXT
from tests.helpers import new_team, until, waits_for_a_lock

CR = 1_000_000
MIDNIGHT = datetime(2030, 5, 2, tzinfo=UTC)
TTL = timedelta(minutes=10)

pytestmark = pytest.mark.real_clock


def _in_transaction(app: Flask, operation: Any, **kwargs: Any) -> Any:
    with app.app_context():
        try:
            with write_transaction(db.session):
                return operation(db.session, context=TEST_CONTEXT, **kwargs)
        finally:
            db.session.remove()


def _cap(app: Flask, account_id: int, *, ceiling: int, period: str, now: datetime) -> int:
    with app.app_context():
        with write_transaction(db.session):
            cap_id = ledger.caps.open_cap(
                db.session,
                account_id=account_id,
                kind="key",
                ceiling=ceiling,
                period=period,
                now=now,
            )
        db.session.remove()
    return cap_id


def _standing(app: Flask, cap_id: int, now: datetime) -> ledger.caps.CapStanding:
    with app.app_context():
        standing = ledger.caps.standing(db.session, cap_id=cap_id, now=now)
        db.session.remove()
    return standing


def _hold(app: Flask, account_id: int, cap_id: int, amount: int, now: datetime) -> int:
    held = _in_transaction(
        app, ledger.hold, account_id=account_id, amount=amount, ttl=TTL, now=now, caps=(cap_id,)
    )
    return int(held.hold_id)


def test_a_statement_with_an_older_clock_never_moves_the_period_back(
    app: Flask, person_factory: Any
) -> None:
    """A settle counted 8 of a daily 10 just after midnight; a hold whose clock still read the
    day before (taken before it waited for the lock) must not start that day again, or the new
    day could be spent twice."""
    person = person_factory(credits=100 * CR)
    before, after = MIDNIGHT - timedelta(milliseconds=10), MIDNIGHT + timedelta(milliseconds=5)
    cap_id = _cap(app, person.account_id, ceiling=10 * CR, period="day", now=before)
    first = _hold(app, person.account_id, cap_id, 8 * CR, before)
    _in_transaction(app, ledger.settle, hold_id=first, actual=8 * CR, now=after)
    late_clock = _hold(app, person.account_id, cap_id, 1 * CR, before)
    assert _standing(app, cap_id, after) == ledger.caps.CapStanding(10 * CR, 8 * CR, 1 * CR)
    with pytest.raises(KeyLimitReached):
        _hold(app, person.account_id, cap_id, 9 * CR, after)
    _in_transaction(app, ledger.void, hold_id=late_clock, now=before)
    assert _standing(app, cap_id, after) == ledger.caps.CapStanding(10 * CR, 8 * CR, 0)


def test_a_settle_whose_clock_read_the_day_before_counts_and_reconciles_in_the_new_day(
    app: Flask, person_factory: Any
) -> None:
    """A settle took its clock before midnight, then waited for the account while another call
    started the cap's new day: its capture counts in the new day, and its resolution is dated
    from the day's start, so that reconciliation finds the day's spending in its holds."""
    person = person_factory(credits=100 * CR)
    before, after = MIDNIGHT - timedelta(milliseconds=10), MIDNIGHT + timedelta(milliseconds=5)
    cap_id = _cap(app, person.account_id, ceiling=10 * CR, period="day", now=before)
    waited = _hold(app, person.account_id, cap_id, 4 * CR, before)
    _hold(app, person.account_id, cap_id, 1 * CR, after)  # the new day starts here
    _in_transaction(app, ledger.settle, hold_id=waited, actual=3 * CR, now=before)
    assert _standing(app, cap_id, after) == ledger.caps.CapStanding(10 * CR, 3 * CR, 1 * CR)
    with app.app_context():
        resolved_at = db.session.get(Hold, waited).resolved_at  # type: ignore[union-attr]
        assert ledger.reconcile(db.session, account_ids=[person.account_id]) == []
        db.session.remove()
    assert resolved_at == MIDNIGHT


def test_a_late_settle_never_takes_a_cap_past_its_ceiling(app: Flask, person_factory: Any) -> None:
    """A hold expired (its reservation freed and taken by another call), then its answer came:
    charged only what the cap still allows, the rest uncollected."""
    person = person_factory(credits=100 * CR)
    now = MIDNIGHT
    cap_id = _cap(app, person.account_id, ceiling=10 * CR, period="total", now=now)
    slow = _hold(app, person.account_id, cap_id, 6 * CR, now)
    _in_transaction(app, ledger.expire_hold, hold_id=slow, now=now + TTL)
    other = _hold(app, person.account_id, cap_id, 10 * CR, now + TTL)
    _in_transaction(app, ledger.settle, hold_id=other, actual=7 * CR, now=now + TTL)
    late = _in_transaction(app, ledger.settle, hold_id=slow, actual=6 * CR, now=now + 2 * TTL)
    assert (late.captured, late.uncollected) == (3 * CR, 3 * CR)
    assert _standing(app, cap_id, now + 2 * TTL) == ledger.caps.CapStanding(10 * CR, 10 * CR, 0)


def test_a_hold_settled_again_at_the_same_instant_counts_in_its_caps_once(
    app: Flask, person_factory: Any
) -> None:
    """A settle counts its charge in the hold's caps in the round trip that resolves the hold,
    only when that statement resolved it: a second settle of the same hold, even with the same
    clock reading, finds it settled and changes nothing (its cap counted 3 once, reserves 0)."""
    person = person_factory(credits=100 * CR)
    cap_id = _cap(app, person.account_id, ceiling=10 * CR, period="day", now=MIDNIGHT)
    held = _hold(app, person.account_id, cap_id, 4 * CR, MIDNIGHT)
    first = _in_transaction(app, ledger.settle, hold_id=held, actual=3 * CR, now=MIDNIGHT)
    again = _in_transaction(app, ledger.settle, hold_id=held, actual=1 * CR, now=MIDNIGHT)
    assert (first.applied, first.captured, again.applied, again.captured) == (
        True,
        3 * CR,
        False,
        3 * CR,
    )
    assert _standing(app, cap_id, MIDNIGHT) == ledger.caps.CapStanding(10 * CR, 3 * CR, 0)
    with app.app_context():
        assert ledger.reconcile(db.session, account_ids=[person.account_id]) == []
        db.session.remove()


def test_an_open_hold_still_captures_its_amount_under_a_lowered_ceiling(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(credits=100 * CR)
    cap_id = _cap(app, person.account_id, ceiling=10 * CR, period="total", now=MIDNIGHT)
    held = _hold(app, person.account_id, cap_id, 8 * CR, MIDNIGHT)
    with app.app_context():
        with write_transaction(db.session):
            ledger.caps.set_ceiling(db.session, cap_id=cap_id, ceiling=2 * CR)
        db.session.remove()
    settled = _in_transaction(app, ledger.settle, hold_id=held, actual=8 * CR, now=MIDNIGHT)
    assert (settled.captured, settled.uncollected) == (8 * CR, 0)
    with pytest.raises(KeyLimitReached):
        _hold(app, person.account_id, cap_id, 1, MIDNIGHT)


def test_a_closed_cap_refuses_every_new_hold_and_its_open_holds_still_resolve(
    app: Flask, person_factory: Any
) -> None:
    """A key revoked, or a member removed, after their request passed those checks: the hold's
    own update refuses it (as the revocation or the team's absence), nothing is reserved."""
    person, owner = person_factory(credits=100 * CR), person_factory(credits=100 * CR)
    key_cap = _cap(app, person.account_id, ceiling=10 * CR, period="day", now=MIDNIGHT)
    with app.app_context():
        team_id, team_account = new_team(owner.id, person.id)
        with write_transaction(db.session):
            ledger.grant(
                db.session,
                account_id=team_account,
                amount=50 * CR,
                source="promo",
                reason="team credits",
                context=TEST_CONTEXT,
                now=MIDNIGHT,
            )
        member_cap = accounts.payer(db.session, person.id, team_id).caps[0]
        db.session.remove()
    open_hold = _hold(app, person.account_id, key_cap, 2 * CR, MIDNIGHT)
    member_hold = _hold(app, team_account, member_cap, 2 * CR, MIDNIGHT)
    with app.app_context():
        with write_transaction(db.session):
            ledger.caps.close(db.session, cap_id=key_cap, now=MIDNIGHT)
            teams.remove_member(
                db.session,
                team_id=team_id,
                actor_id=owner.id,
                user_id=person.id,
                context=TEST_CONTEXT,
                now=MIDNIGHT,
            )
        db.session.remove()

    with pytest.raises(InvalidApiKey):
        _hold(app, person.account_id, key_cap, 1 * CR, MIDNIGHT)
    with pytest.raises(NotFound):
        _hold(app, team_account, member_cap, 1 * CR, MIDNIGHT)
    _in_transaction(app, ledger.settle, hold_id=open_hold, actual=1 * CR, now=MIDNIGHT)
    _in_transaction(app, ledger.settle, hold_id=member_hold, actual=2 * CR, now=MIDNIGHT)
    assert _standing(app, key_cap, MIDNIGHT) == ledger.caps.CapStanding(10 * CR, 1 * CR, 0)
    assert _standing(app, member_cap, MIDNIGHT) == ledger.caps.CapStanding(None, 2 * CR, 0)
    with app.app_context():
        assert ledger.reconcile(db.session) == []
        db.session.remove()


@pytest.mark.postgres_only
def test_a_settle_takes_its_caps_in_id_order_whatever_the_plan(
    app: Flask, person_factory: Any
) -> None:
    """A hold takes its caps in id order, then its account; a resolution counting in them must
    take them in the same order, or a settle and a hold of the same spender deadlock. A plan
    scanning the caps in the table's physical order (a hash join over a sequential scan, which
    PostgreSQL picks for a small table) takes them in that order, which every update of a cap
    changes. Here another transaction holds the lower cap and then asks for the higher one
    while a settle runs under such a plan: it must get it (the settle waits for the lower cap
    holding no cap), and both finish."""
    person = person_factory(credits=100 * CR)
    now = MIDNIGHT
    lower, higher = (
        _cap(app, person.account_id, ceiling=50 * CR, period="day", now=now) for _ in range(2)
    )
    held = _in_transaction(
        app,
        ledger.hold,
        account_id=person.account_id,
        amount=CR,
        ttl=TTL,
        now=now,
        caps=(lower, higher),
    )
    errors: list[str] = []
    captured: list[int] = []

    def settle() -> None:
        """The hold settled within its amount: its caps counted with its resolution."""
        with app.app_context():
            try:
                with write_transaction(db.session):
                    for plan in ("indexscan", "bitmapscan", "nestloop", "mergejoin"):
                        db.session.execute(text(f"SET LOCAL enable_{plan} = off"))
                    settled = ledger.settle(
                        db.session,
                        hold_id=held.hold_id,
                        actual=CR,
                        context=TEST_CONTEXT,
                        now=now,
                    )
                    captured.append(settled.captured)
            except Exception as error:
                errors.append(f"settle: {type(error).__name__}: {error}")
            finally:
                db.session.remove()

    with app.app_context(), db.engine.connect() as other:
        # The lower cap's newest row version written last: a sequential scan finds it second.
        other.execute(text("UPDATE spend_caps SET spent = spent WHERE id = :cap"), {"cap": lower})
        other.commit()
        other.execute(text("SET LOCAL lock_timeout = '20s'"))
        other.execute(text("SELECT id FROM spend_caps WHERE id = :cap FOR UPDATE"), {"cap": lower})
        resolution = threading.Thread(target=settle)
        resolution.start()
        try:
            assert until(waits_for_a_lock), "the settle never waited for the lower cap"
            try:
                other.execute(
                    text("SELECT id FROM spend_caps WHERE id = :cap FOR UPDATE"), {"cap": higher}
                )
            except DBAPIError as error:
                errors.append(f"other: {type(error.orig).__name__}: {error.orig}")
            other.commit()
        finally:
            resolution.join(30)
    assert errors == []
    assert captured == [CR]
    for cap_id in (lower, higher):
        assert _standing(app, cap_id, now) == ledger.caps.CapStanding(50 * CR, CR, 0)
