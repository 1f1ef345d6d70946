"""A Hypothesis state machine drives the ledger through random operations and checks every
invariant, and an independent model of what each operation must do, after every step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
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

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits
from creditapp.extensions import db
from creditapp.ledger.models import Grant, LedgerEntry
from tests.conftest import TEST_CONTEXT, create_person

CR = 1_000_000
amounts = st.integers(min_value=1, max_value=50 * CR)


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self, app: Flask, serial: list[int]):
        super().__init__()
        self.app = app
        serial[0] += 1
        self.serial = serial[0]
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.pending: dict[int, int] = {}
        self.credited = 0
        self.spent = 0
        self.period = 0

    @initialize()
    def open_account(self) -> None:
        person = create_person(self.app, f"machine-{self.serial}@example.com")
        self.account = person.account_id

    def _run(self, operation, **kwargs):  # type: ignore[no-untyped-def]
        with self.app.app_context():
            try:
                with write_transaction(db.session):
                    return operation(db.session, context=TEST_CONTEXT, now=self.now, **kwargs)
            finally:
                db.session.remove()

    def _view(self) -> ledger.Balance:
        with self.app.app_context():
            try:
                return ledger.balance(db.session, account_id=self.account, now=self.now)
            finally:
                db.session.remove()

    @rule(amount=amounts, expires_in_hours=st.none() | st.integers(min_value=1, max_value=72))
    def grant(self, amount: int, expires_in_hours: int | None) -> None:
        expires_at = (
            None if expires_in_hours is None else self.now + timedelta(hours=expires_in_hours)
        )
        self._run(
            ledger.grant,
            account_id=self.account,
            amount=amount,
            source="promo",
            reason="machine",
            expires_at=expires_at,
        )
        self.credited += amount

    @rule(amount=st.integers(min_value=-50 * CR, max_value=50 * CR).filter(bool))
    def adjust(self, amount: int) -> None:
        available = self._view().available
        try:
            self._run(ledger.adjust, account_id=self.account, amount=amount, reason="machine")
        except BalanceWouldGoNegative:
            assert amount < 0 and -amount > available
            return
        assert amount > 0 or -amount <= available
        if amount > 0:
            self.credited += amount
        else:
            self.spent += -amount

    @rule(target=holds, amount=amounts)
    def hold(self, amount: int):  # type: ignore[no-untyped-def]
        before = self._view()
        try:
            held = self._run(
                ledger.hold, account_id=self.account, amount=amount, ttl=timedelta(minutes=30)
            )
        except InsufficientCredits as refused:
            assert amount > before.available
            assert refused.available == before.available
            return multiple()
        assert amount <= before.available
        assert held.balance.available == before.available - amount
        self.pending[held.hold_id] = amount
        return held.hold_id

    @rule(hold_id=consumes(holds), actual=st.integers(min_value=0, max_value=60 * CR))
    def settle(self, hold_id: int, actual: int) -> None:
        before = self._view()
        outcome = self._run(ledger.settle, hold_id=hold_id, actual=actual)
        assert outcome.applied
        # A hold the expiry rule released is settled late, from what is available now.
        amount = self.pending.pop(hold_id, 0)
        assert outcome.late == (amount == 0)
        assert outcome.captured == min(actual, amount + before.available)
        assert outcome.captured + outcome.uncollected == actual
        self.spent += outcome.captured
        again = self._run(ledger.void, hold_id=hold_id)
        assert (again.status, again.captured, again.applied) == ("settled", outcome.captured, False)

    @rule(hold_id=consumes(holds))
    def void(self, hold_id: int) -> None:
        outcome = self._run(ledger.void, hold_id=hold_id)
        assert outcome.applied == (hold_id in self.pending)
        self.pending.pop(hold_id, None)

    @rule(hours=st.integers(min_value=1, max_value=48))
    def advance_time(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    @rule()
    def expire_grants(self) -> None:
        self._run(ledger.expire_grants, account_id=self.account)

    @rule()
    def expire_holds(self) -> None:
        with self.app.app_context():
            overdue = ledger.overdue_hold_ids(db.session, now=self.now)
            db.session.remove()
        for hold_id in overdue:
            if hold_id in self.pending:
                assert self._run(ledger.expire_hold, hold_id=hold_id).applied
                self.pending.pop(hold_id)

    @rule(amount=amounts)
    def refresh(self, amount: int) -> None:
        self.period += 1
        label = f"p{self.period}"
        for _ in range(2):  # the second call must change nothing
            result = self._run(
                ledger.refresh,
                account_id=self.account,
                period=label,
                amount=amount,
                expires_at=self.now + timedelta(days=30),
            )
        assert not result.created
        self.credited += amount

    @invariant()
    def ledger_is_consistent(self) -> None:
        if not hasattr(self, "account"):
            return
        with self.app.app_context():
            try:
                assert ledger.reconcile(db.session, account_ids=[self.account]) == []
                view = ledger.balance(db.session, account_id=self.account, now=self.now)
                assert view.reserved == sum(self.pending.values())
                assert 0 <= view.reserved <= view.balance
                expired = db.session.execute(
                    select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                        LedgerEntry.account_id == self.account, LedgerEntry.type == "expire"
                    )
                ).scalar_one()
                stored = db.session.execute(
                    select(func.coalesce(func.sum(Grant.remaining), 0)).where(
                        Grant.account_id == self.account
                    )
                ).scalar_one()
                # Every credit that came in went out as a charge, an adjustment or an expiry.
                assert stored == self.credited - self.spent + int(expired)
            finally:
                db.session.remove()


def test_ledger_state_machine(app: Flask) -> None:
    serial = [0]
    run_state_machine_as_test(
        lambda: LedgerMachine(app, serial),
        settings=settings(
            max_examples=int(__import__("os").environ.get("MACHINE_EXAMPLES", 200)),
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
