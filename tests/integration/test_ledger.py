"""Worked examples of the ledger: every operation, its entries, its audit record, its edge cases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import (
    BalanceWouldGoNegative,
    CreditAppError,
    ExpiryNotInFuture,
    HoldNotExpired,
    InsufficientCredits,
)
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Grant, Hold, LedgerEntry
from tests.conftest import TEST_CONTEXT, utcnow

CR = 1_000_000  # one credit in micro-credits
TTL = timedelta(minutes=10)


def run(operation, **kwargs):  # type: ignore[no-untyped-def]
    """One ledger operation in its own committed transaction."""
    kwargs.setdefault("context", TEST_CONTEXT)
    kwargs.setdefault("now", utcnow())
    with write_transaction(db.session):
        return operation(db.session, **kwargs)


def give(account: int, amount: int, **kwargs: Any) -> ledger.GrantResult:
    """Grant promo credits (or `source=`) to the account, committed."""
    kwargs.setdefault("source", "promo")
    kwargs.setdefault("reason", "test")
    return run(ledger.grant, account_id=account, amount=amount, **kwargs)  # type: ignore[no-any-return]


def state(account_id: int, now=None) -> ledger.Balance:  # type: ignore[no-untyped-def]
    return ledger.balance(db.session, account_id=account_id, now=now or utcnow())


def entry_rows(account_id: int) -> list[tuple[str, int, int]]:
    return [
        (e.type, e.amount, e.balance_after)
        for e in db.session.execute(
            select(LedgerEntry)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.seq)
        ).scalars()
    ]


def assert_consistent(account_id: int) -> None:
    db.session.rollback()
    assert ledger.reconcile(db.session, account_ids=[account_id]) == []


@pytest.fixture
def account(ctx, person_factory) -> int:  # type: ignore[no-untyped-def]
    return person_factory().account_id


def test_grant_adds_a_grant_an_entry_and_an_audit_record(account: int) -> None:
    result = give(account, 10 * CR, reason="hi")
    assert result.balance == ledger.Balance(10 * CR, 0)
    assert entry_rows(account) == [("grant", 10 * CR, 10 * CR)]
    entry = db.session.execute(select(LedgerEntry)).scalar_one()
    audit = db.session.get(AuditRecord, entry.audit_id)
    assert (audit.action, audit.balance_before, audit.balance_after) == ("grant", 0, 10 * CR)
    assert audit.details["reason"] == "hi"
    assert_consistent(account)


def test_hold_reserves_and_refuses_more_than_available(account: int) -> None:
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=6 * CR, ttl=TTL)
    assert held.balance == ledger.Balance(10 * CR, 6 * CR)
    with pytest.raises(InsufficientCredits) as refused:
        run(ledger.hold, account_id=account, amount=4 * CR + 1, ttl=TTL)
    assert (refused.value.required, refused.value.available) == (4 * CR + 1, 4 * CR)
    assert db.session.execute(select(Hold.id)).scalars().all() == [held.hold_id]
    assert state(account) == ledger.Balance(10 * CR, 6 * CR)
    assert_consistent(account)


@pytest.mark.parametrize("refused_by", ["balance", "cap"])
def test_a_refused_hold_writes_nothing_even_if_its_caller_commits(
    account: int, refused_by: str
) -> None:
    """A hold sends its reservations and its row together, before it knows whether it is
    refused: a refusal undoes them, so a caller that goes on and commits commits nothing of
    it (no hold, no audit record, nothing reserved in the account or its caps)."""
    give(account, 10 * CR)
    now = utcnow()
    with write_transaction(db.session):
        open_cap = ledger.caps.open_cap(
            db.session, account_id=account, kind="key", ceiling=3 * CR, period="total", now=now
        )
        other_cap = ledger.caps.open_cap(
            db.session, account_id=account, kind="key", ceiling=None, period="total", now=now
        )
    audits = db.session.execute(select(AuditRecord.id)).scalars().all()
    amount, caps = (
        (11 * CR, (other_cap,)) if refused_by == "balance" else (4 * CR, (other_cap, open_cap))
    )
    with write_transaction(db.session), pytest.raises(CreditAppError):
        ledger.hold(
            db.session,
            account_id=account,
            amount=amount,
            ttl=TTL,
            context=TEST_CONTEXT,
            now=now,
            caps=caps,
        )
    db.session.rollback()
    assert db.session.execute(select(Hold.id)).scalars().all() == []
    assert db.session.execute(select(AuditRecord.id)).scalars().all() == audits
    assert state(account) == ledger.Balance(10 * CR, 0)
    for cap_id in (open_cap, other_cap):
        standing = ledger.caps.standing(db.session, cap_id=cap_id, now=utcnow())
        assert (standing.spent, standing.reserved) == (0, 0)
    assert_consistent(account)


def test_settle_below_the_hold_charges_actual_and_releases_the_rest(account: int) -> None:
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL, reference="msg-1")
    outcome = run(ledger.settle, hold_id=held.hold_id, actual=1_500_000)
    # The account as the settle left it, as a read of it would say.
    assert outcome == ledger.Resolution(
        held.hold_id, "settled", 1_500_000, 0, applied=True, balance=ledger.Balance(8_500_000, 0)
    )
    assert state(account) == outcome.balance
    charge = db.session.execute(
        select(LedgerEntry).where(LedgerEntry.type == "charge")
    ).scalar_one()
    assert (charge.amount, charge.hold_id, charge.reference) == (-1_500_000, held.hold_id, "msg-1")
    assert_consistent(account)


def test_settle_above_the_hold_is_capped_and_records_the_shortfall(account: int) -> None:
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL)
    outcome = run(ledger.settle, hold_id=held.hold_id, actual=15 * CR)
    assert (outcome.captured, outcome.uncollected) == (10 * CR, 5 * CR)
    assert state(account) == ledger.Balance(0, 0)
    hold = db.session.get(Hold, held.hold_id)
    assert (hold.status, hold.captured, hold.uncollected) == ("settled", 10 * CR, 5 * CR)
    assert_consistent(account)


def test_a_hold_resolves_exactly_once(account: int) -> None:
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL)
    first = run(ledger.settle, hold_id=held.hold_id, actual=2 * CR)
    again = run(ledger.settle, hold_id=held.hold_id, actual=3 * CR)
    voided = run(ledger.void, hold_id=held.hold_id)
    assert first.applied and not again.applied and not voided.applied
    assert again == voided == ledger.Resolution(held.hold_id, "settled", 2 * CR, 0, applied=False)
    assert state(account) == ledger.Balance(8 * CR, 0)
    assert [row[0] for row in entry_rows(account)] == ["grant", "charge"]
    assert_consistent(account)


def test_void_releases_everything_and_charges_nothing(account: int) -> None:
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL)
    outcome = run(ledger.void, hold_id=held.hold_id)
    assert outcome == ledger.Resolution(
        held.hold_id, "voided", 0, 0, applied=True, balance=ledger.Balance(10 * CR, 0)
    )
    assert state(account) == outcome.balance
    assert entry_rows(account) == [("grant", 10 * CR, 10 * CR)]
    assert_consistent(account)


def test_spending_draws_soonest_expiring_first_then_oldest(account: int) -> None:
    now = utcnow()
    never = give(account, 5 * CR, source="purchase", reason="a")
    later = give(account, 5 * CR, reason="b", expires_at=now + timedelta(days=2))
    sooner = give(account, 5 * CR, reason="c", expires_at=now + timedelta(days=1))
    held = run(ledger.hold, account_id=account, amount=12 * CR, ttl=TTL)
    run(ledger.settle, hold_id=held.hold_id, actual=12 * CR)
    remaining = {g.id: g.remaining for g in db.session.execute(select(Grant)).scalars()}
    assert remaining == {sooner.grant_id: 0, later.grant_id: 0, never.grant_id: 3 * CR}
    charges = db.session.execute(
        select(LedgerEntry.grant_id, LedgerEntry.amount)
        .where(LedgerEntry.type == "charge")
        .order_by(LedgerEntry.seq)
    ).all()
    assert charges == [
        (sooner.grant_id, -5 * CR),
        (later.grant_id, -5 * CR),
        (never.grant_id, -2 * CR),
    ]
    assert_consistent(account)


def test_expired_credits_are_never_shown_and_written_off_by_the_next_operation(
    account: int,
) -> None:
    now = utcnow()
    give(account, 3 * CR, reason="soon", expires_at=now + timedelta(hours=1))
    give(account, 2 * CR, source="purchase", reason="kept")
    after = now + timedelta(hours=2)
    assert state(account, after) == ledger.Balance(2 * CR, 0)
    with pytest.raises(InsufficientCredits) as refused:
        run(ledger.hold, account_id=account, amount=3 * CR, ttl=TTL, now=after)
    assert refused.value.available == 2 * CR
    run(ledger.hold, account_id=account, amount=2 * CR, ttl=TTL, now=after)
    assert entry_rows(account) == [
        ("grant", 3 * CR, 3 * CR),
        ("grant", 2 * CR, 5 * CR),
        ("expire", -3 * CR, 2 * CR),
    ]
    assert_consistent(account)


def test_a_hold_placed_before_an_expiry_can_still_be_paid(account: int) -> None:
    now = utcnow()
    give(account, 5 * CR, reason="r", expires_at=now + timedelta(minutes=5))
    held = run(ledger.hold, account_id=account, amount=3 * CR, ttl=TTL, now=now)
    after = now + timedelta(minutes=6)
    # The next operation writes off only what the open hold does not need.
    run(ledger.expire_grants, account_id=account, now=after)
    assert db.session.execute(select(Grant.remaining)).scalar_one() == 3 * CR
    assert state(account, after) == ledger.Balance(3 * CR, 3 * CR)
    run(ledger.settle, hold_id=held.hold_id, actual=1 * CR, now=after)
    assert state(account, after) == ledger.Balance(0, 0)
    assert [row[:2] for row in entry_rows(account)] == [
        ("grant", 5 * CR),
        ("expire", -2 * CR),
        ("charge", -1 * CR),
        ("expire", -2 * CR),
    ]
    assert_consistent(account)


def test_refresh_is_once_per_period_and_ends_the_previous_subscription_grant(account: int) -> None:
    now = utcnow()
    give(account, 7 * CR, reason="kept")
    first, repeat = (
        run(
            ledger.refresh,
            account_id=account,
            period="2026-10",
            amount=100 * CR,
            expires_at=now + timedelta(days=30),
            now=now,
        )
        for _ in range(2)
    )
    assert first.created and not repeat.created and repeat.grant_id == first.grant_id
    held = run(ledger.hold, account_id=account, amount=30 * CR, ttl=TTL, now=now)
    run(ledger.settle, hold_id=held.hold_id, actual=30 * CR, now=now)
    later = now + timedelta(days=31)
    run(
        ledger.refresh,
        account_id=account,
        period="2026-11",
        amount=100 * CR,
        expires_at=later + timedelta(days=30),
        now=later,
    )
    assert state(account, later) == ledger.Balance(107 * CR, 0)
    assert [row[:2] for row in entry_rows(account)] == [
        ("grant", 7 * CR),
        ("refresh", 100 * CR),
        ("charge", -30 * CR),
        ("expire", -70 * CR),
        ("refresh", 100 * CR),
    ]
    assert_consistent(account)


def test_adjust_adds_credits_or_takes_only_what_is_available(account: int) -> None:
    run(ledger.adjust, account_id=account, amount=10 * CR, reason="goodwill")
    run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL)
    with pytest.raises(BalanceWouldGoNegative):
        run(ledger.adjust, account_id=account, amount=-6 * CR - 1, reason="too much")
    result = run(ledger.adjust, account_id=account, amount=-6 * CR, reason="correction")
    assert result == ledger.Balance(4 * CR, 4 * CR)
    assert [row[:2] for row in entry_rows(account)] == [("adjust", 10 * CR), ("adjust", -6 * CR)]
    assert_consistent(account)


def test_a_hold_that_first_writes_off_expired_credits_adds_to_what_is_reserved(
    account: int,
) -> None:
    now = utcnow()
    give(account, 5 * CR, now=now, expires_at=now + timedelta(minutes=1))
    give(account, 10 * CR, now=now)
    first = run(ledger.hold, account_id=account, amount=3 * CR, ttl=TTL, now=now)
    # A minute later the first grant has expired: this hold writes it off before reserving.
    later = now + timedelta(minutes=2)
    second = run(ledger.hold, account_id=account, amount=2 * CR, ttl=TTL, now=later)
    # The first hold, placed before the expiry, claims 3 of the expired grant: the rest goes.
    assert (first.balance, second.balance) == (
        ledger.Balance(15 * CR, 3 * CR),
        ledger.Balance(13 * CR, 5 * CR),
    )
    assert state(account, later) == ledger.Balance(13 * CR, 5 * CR)
    holds = db.session.scalars(
        select(AuditRecord).where(AuditRecord.action == "hold").order_by(AuditRecord.id)
    ).all()
    assert [
        (h.balance_before, h.balance_after, h.reserved_before, h.reserved_after) for h in holds
    ] == [(15 * CR, 15 * CR, 0, 3 * CR), (15 * CR, 13 * CR, 3 * CR, 5 * CR)]
    assert [h.details["hold_id"] for h in holds] == [str(first.hold_id), str(second.hold_id)]
    assert [h.details["amount"] for h in holds] == ["3", "2"]
    assert_consistent(account)


def test_only_overdue_holds_expire(account: int) -> None:
    now = utcnow()
    give(account, 10 * CR)
    held = run(ledger.hold, account_id=account, amount=4 * CR, ttl=TTL, now=now)
    assert ledger.overdue_hold_ids(db.session, now=now + TTL - timedelta(seconds=1)) == []
    with pytest.raises(HoldNotExpired):
        run(ledger.expire_hold, hold_id=held.hold_id, now=now)
    assert ledger.overdue_hold_ids(db.session, now=now + TTL) == [held.hold_id]
    outcome = run(ledger.expire_hold, hold_id=held.hold_id, now=now + TTL)
    assert (outcome.status, outcome.captured, outcome.applied) == ("expired", 0, True)
    assert state(account) == ledger.Balance(10 * CR, 0)
    assert_consistent(account)


def test_an_operation_timed_before_the_newest_entry_is_stamped_no_earlier(account: int) -> None:
    now = utcnow()
    give(account, 10 * CR, now=now + timedelta(seconds=10))
    # Timed earlier, as an operation that waited for the lock behind the grant would be.
    run(ledger.adjust, account_id=account, amount=-CR, reason="later in the chain", now=now)
    chain = db.session.execute(
        select(LedgerEntry.type, LedgerEntry.created_at, AuditRecord.created_at)
        .join(AuditRecord, AuditRecord.id == LedgerEntry.audit_id)
        .where(LedgerEntry.account_id == account)
        .order_by(LedgerEntry.seq)
    ).all()
    stamped = now + timedelta(seconds=10)
    assert chain == [("grant", stamped, stamped), ("adjust", stamped, stamped)]
    assert_consistent(account)


def test_reconcile_reports_drift_it_did_not_cause(account: int) -> None:
    grant = give(account, 10 * CR)
    with write_transaction(db.session):
        # A grant's remainder is not tied to the balance by a constraint; reconcile catches it.
        db.session.execute(
            text("UPDATE grants SET remaining = remaining - 1 WHERE id = :id"),
            {"id": grant.grant_id},
        )
    drift = {d.invariant: (d.expected, d.actual) for d in ledger.reconcile(db.session)}
    assert drift == {
        "balance == sum(grants' remaining)": (10 * CR - 1, 10 * CR),
        f"grant {grant.grant_id}: remaining == sum(its entries)": (10 * CR, 10 * CR - 1),
    }
    assert state(account) == ledger.Balance(10 * CR, 0)


def test_a_grant_is_expired_at_its_expiry_time_exactly(account: int) -> None:
    now = utcnow()
    with pytest.raises(ExpiryNotInFuture):
        give(account, CR, now=now, expires_at=now)
    give(account, 4 * CR, now=now, expires_at=now + timedelta(hours=1))
    give(account, CR, now=now)
    at_expiry = now + timedelta(hours=1)
    assert state(account, at_expiry - timedelta(microseconds=1)) == ledger.Balance(5 * CR, 0)
    assert state(account, at_expiry) == ledger.Balance(CR, 0)
    run(ledger.expire_grants, account_id=account, now=at_expiry)
    assert entry_rows(account)[-1] == ("expire", -4 * CR, CR)
    assert_consistent(account)


def test_expired_grants_are_written_off_in_draw_order_to_the_last_microcredit(
    account: int,
) -> None:
    now = utcnow()
    expiry = now + timedelta(hours=1)
    tiny = give(account, 1, now=now, expires_at=expiry).grant_id  # 1 µcr, goes first
    first = give(account, 3 * CR, now=now, expires_at=expiry).grant_id
    second = give(account, 4 * CR, now=now, expires_at=expiry).grant_id
    lasting = give(account, 2 * CR, now=now).grant_id
    # Reserved before the expiry: claims the grants in draw order, all but 1 credit + 2 µcr.
    held = run(ledger.hold, account_id=account, amount=6 * CR - 1, ttl=TTL * 12, now=now)
    later = expiry + timedelta(minutes=1)
    run(ledger.expire_grants, account_id=account, now=later)
    remaining = dict(db.session.execute(select(Grant.id, Grant.remaining)).all())
    # The hold claims the 1 µcr grant, the first whole and 3 credits - 2 µcr of the second;
    # the rest of the second is written off; the unexpired grant is all available.
    assert remaining == {tiny: 1, first: 3 * CR, second: 3 * CR - 2, lasting: 2 * CR}
    assert state(account, later) == ledger.Balance(8 * CR - 1, 6 * CR - 1)
    # Settling spends the expired credits it kept first; what is left of them goes.
    outcome = run(ledger.settle, hold_id=held.hold_id, actual=4 * CR - 1, now=later)
    assert outcome.captured == 4 * CR - 1
    remaining = dict(db.session.execute(select(Grant.id, Grant.remaining)).all())
    assert remaining == {tiny: 0, first: 0, second: 0, lasting: 2 * CR}
    assert_consistent(account)


def test_a_settle_after_an_expiry_draws_the_expired_credits_its_hold_claimed(
    account: int,
) -> None:
    """As it would have drawn them just before the expiry: a late answer costs the account
    none of its lasting credits for what the hold reserved of the expiring ones."""
    now = utcnow()
    expiring = give(account, CR, now=now, expires_at=now + timedelta(hours=1)).grant_id
    crumb = give(account, 1, now=now, expires_at=now + timedelta(days=1)).grant_id
    lasting = give(account, 10 * CR, now=now).grant_id
    held = run(ledger.hold, account_id=account, amount=2 * CR, ttl=TTL * 12, now=now)
    # Two hours on (the hold open all along), the balance keeps what the hold claimed.
    assert state(account, now + timedelta(hours=2)) == ledger.Balance(11 * CR + 1, 2 * CR)
    outcome = run(ledger.settle, hold_id=held.hold_id, actual=CR + 1, now=now + timedelta(hours=2))
    assert outcome.captured == CR + 1
    remaining = dict(db.session.execute(select(Grant.id, Grant.remaining)).all())
    assert remaining == {expiring: 0, crumb: 0, lasting: 10 * CR}
    assert [row[:2] for row in entry_rows(account)[-2:]] == [("charge", -CR), ("charge", -1)]
    assert "expire" not in [row[0] for row in entry_rows(account)]
    # The smallest positive adjustment is a grant of its own.
    run(ledger.adjust, account_id=account, amount=1, reason="give", now=now + timedelta(hours=2))
    assert entry_rows(account)[-1] == ("adjust", 1, 10 * CR + 1)
    newest = db.session.scalars(select(Grant).order_by(Grant.id.desc()).limit(1)).one()
    assert (newest.source, newest.amount, newest.remaining) == ("admin", 1, 1)
    assert_consistent(account)


def _held_across_an_expiry(account: int, after_amount: int) -> tuple[datetime, int, int, Any, Any]:
    """100 credits expiring in an hour and 100 lasting; a hold of 100 placed a second before
    the expiry, and one of `after_amount` a second after it: the expiry, both grants' ids and
    both holds."""
    now = utcnow()
    expiry = now + timedelta(hours=1)
    promo = give(account, 100 * CR, now=now, expires_at=expiry).grant_id
    lasting = give(account, 100 * CR, now=now).grant_id
    holds = [
        run(ledger.hold, account_id=account, amount=amount, ttl=TTL * 12, now=expiry + offset)
        for amount, offset in (
            (100 * CR, -timedelta(seconds=1)),
            (after_amount, timedelta(seconds=1)),
        )
    ]
    return expiry, promo, lasting, holds[0], holds[1]


def test_only_holds_placed_before_an_expiry_claim_the_expired_credits(account: int) -> None:
    """A hold placed before a grant expired claims it (in draw order), to be settled from it
    a second or an hour later; a hold placed after it claims nothing of it."""
    expiry, promo, lasting, before, after = _held_across_an_expiry(account, 50 * CR)
    assert after.balance == ledger.Balance(200 * CR, 150 * CR)
    # The first settles below its hold: what it leaves of the expired grant goes, and the
    # second hold, placed after the expiry, takes nothing of it.
    run(ledger.settle, hold_id=before.hold_id, actual=60 * CR, now=expiry + timedelta(seconds=2))
    remaining = dict(db.session.execute(select(Grant.id, Grant.remaining)).all())
    assert remaining == {promo: 0, lasting: 100 * CR}
    assert [row[:2] for row in entry_rows(account)[-2:]] == [
        ("charge", -60 * CR),
        ("expire", -40 * CR),
    ]
    run(ledger.settle, hold_id=after.hold_id, actual=50 * CR, now=expiry + timedelta(seconds=3))
    assert state(account, expiry + timedelta(seconds=3)) == ledger.Balance(50 * CR, 0)
    assert_consistent(account)


def test_a_hold_placed_after_an_expiry_never_spends_what_another_hold_claims(
    account: int,
) -> None:
    """The expired credits a hold placed before the expiry claims are that hold's: a hold placed
    after it pays from lasting credits, and when the first is voided the claim is written off."""
    expiry, promo, lasting, before, after = _held_across_an_expiry(account, 100 * CR)
    run(ledger.settle, hold_id=after.hold_id, actual=100 * CR, now=expiry + timedelta(seconds=2))
    remaining = dict(db.session.execute(select(Grant.id, Grant.remaining)).all())
    assert remaining == {promo: 100 * CR, lasting: 0}
    run(ledger.void, hold_id=before.hold_id, now=expiry + timedelta(seconds=3))
    assert state(account, expiry + timedelta(seconds=3)) == ledger.Balance(0, 0)
    assert [row[:2] for row in entry_rows(account)[-2:]] == [
        ("charge", -100 * CR),
        ("expire", -100 * CR),
    ]
    assert_consistent(account)


def test_adjustments_and_refunds_write_off_expired_credits_first(account: int) -> None:
    now = utcnow()
    give(account, 2 * CR, now=now, expires_at=now + timedelta(hours=1))
    give(account, 3 * CR, now=now)
    later = now + timedelta(hours=2)
    run(ledger.adjust, account_id=account, amount=-CR, reason="take", now=later)
    assert [row[:2] for row in entry_rows(account)[-2:]] == [("expire", -2 * CR), ("adjust", -CR)]
    give(account, CR, now=later, expires_at=later + timedelta(hours=1))
    run(
        ledger.refund,
        account_id=account,
        amount=CR,
        reason="r",
        reference="m",
        now=later + timedelta(hours=2),
    )
    assert [row[:2] for row in entry_rows(account)[-2:]] == [("expire", -CR), ("refund", CR)]
    assert state(account, later + timedelta(hours=2)) == ledger.Balance(3 * CR, 0)
    assert_consistent(account)


def test_a_settle_of_nothing_and_a_late_settle_say_what_they_were(account: int) -> None:
    now = utcnow()
    give(account, 10 * CR, now=now)
    free = run(ledger.hold, account_id=account, amount=CR, ttl=TTL, now=now)
    assert run(ledger.settle, hold_id=free.hold_id, actual=0, now=now) == ledger.Resolution(
        free.hold_id, "settled", 0, 0, applied=True, late=False, balance=ledger.Balance(10 * CR, 0)
    )
    late = run(ledger.hold, account_id=account, amount=CR, ttl=TTL, now=now)
    run(ledger.expire_hold, hold_id=late.hold_id, now=now + TTL)
    outcome = run(ledger.settle, hold_id=late.hold_id, actual=CR // 2, now=now + TTL * 2)
    assert outcome == ledger.Resolution(
        late.hold_id,
        "settled",
        CR // 2,
        0,
        applied=True,
        late=True,
        balance=ledger.Balance(10 * CR - CR // 2, 0),
    )
    settles = db.session.scalars(
        select(AuditRecord).where(AuditRecord.action == "settle").order_by(AuditRecord.id)
    ).all()
    assert ["late" in record.details for record in settles] == [False, True]
    assert state(account, now + TTL * 2) == ledger.Balance(10 * CR - CR // 2, 0)
    assert_consistent(account)


def test_reconciling_some_accounts_looks_at_those_alone(account: int, person_factory) -> None:  # type: ignore[no-untyped-def]
    other = person_factory(credits=CR).account_id
    give(account, CR)
    with write_transaction(db.session):
        db.session.execute(
            text("UPDATE grants SET remaining = remaining - 1 WHERE account_id = :a"), {"a": other}
        )
    assert ledger.reconcile(db.session, account_ids=[account]) == []
    drift = ledger.reconcile(db.session, account_ids=[other])
    assert {d.account_id for d in drift} == {other}
    grant_id = db.session.scalar(select(Grant.id).where(Grant.account_id == other))
    assert {d.as_wire()["invariant"]: d.as_wire()["actual"] for d in drift} == {
        "balance == sum(grants' remaining)": "1",
        f"grant {grant_id}: remaining == sum(its entries)": "0.999999",
    }
