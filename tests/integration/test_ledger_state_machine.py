"""A Hypothesis state machine drives the ledger through random programs on several accounts and,
after every step, compares it grant by grant with a model of its own.

The model knows the rules of contract section 2 and nothing of the code: grants with an amount,
an expiry and a remainder, drawn soonest-expiring first (never-expiring last), then oldest; holds
that reserve; expired credits written off by the next operation on the account, except what
open holds placed before the expiry still need; late settles that take what is available. Time
moves by seconds, hours or days, so expiries fall between, on and just after operations.

Two runs: the fixed programs (derandomized, the same every time) and fresh ones from a seed that
is printed, so that a failure can be replayed with LEDGER_MACHINE_SEED=<seed>.
"""

from __future__ import annotations

import copy
import os
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, seed, settings
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
from sqlalchemy import select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger.models import Account, Grant
from tests.conftest import TEST_CONTEXT, create_person

CR = 1_000_000
ACCOUNTS = 3
HOLD_TTL = timedelta(minutes=30)
EXAMPLES = int(os.environ.get("LEDGER_MACHINE_EXAMPLES", 100))

accounts = st.integers(min_value=0, max_value=ACCOUNTS - 1)
amounts = st.integers(min_value=1, max_value=20 * CR)
# Seconds to days, with the hold's lifetime and an hour on either side of it likely.
durations = st.one_of(
    st.integers(min_value=1, max_value=120),
    st.sampled_from([1799, 1800, 1801, 3599, 3600, 3601]),
    st.integers(min_value=1, max_value=3 * 86_400),
)


@dataclass
class ModelGrant:
    grant_id: int
    expires_at: datetime | None
    remaining: int

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass
class ModelHold:
    account: int
    amount: int
    expires_at: datetime
    expired: bool = False


@dataclass
class ModelAccount:
    """What one account must hold, by the contract's rules alone."""

    grants: list[ModelGrant] = field(default_factory=list)  # in the order they were made
    reserved: int = 0

    @property
    def balance(self) -> int:
        return sum(g.remaining for g in self.grants)

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def draw_order(self) -> list[ModelGrant]:
        # Soonest expiry first, never-expiring last; among equals the oldest (list order).
        far_future = datetime.max.replace(tzinfo=UTC)
        return sorted(self.grants, key=lambda g: g.expires_at or far_future)

    def write_off(self, now: datetime) -> None:
        """Expired remainders go, in draw order, except what open holds still need of them:
        the part of `reserved` that the unexpired grants cannot cover."""
        expired = [g for g in self.draw_order() if g.expired(now)]
        unexpired = sum(g.remaining for g in self.grants if not g.expired(now))
        needed = max(self.reserved - unexpired, 0)
        to_write_off = max(sum(g.remaining for g in expired) - needed, 0)
        for grant in expired:
            written = min(grant.remaining, to_write_off)
            grant.remaining -= written
            to_write_off -= written

    def draw(self, amount: int, now: datetime, *, expired_too: bool) -> None:
        for grant in self.draw_order():
            if grant.expired(now) and not expired_too:
                continue
            taken = min(grant.remaining, amount)
            grant.remaining -= taken
            amount -= taken
        assert amount == 0, "the model drew more than there was"


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self, app: Flask, serial: list[int]):
        super().__init__()
        self.app = app
        serial[0] += 1
        self.serial = serial[0]
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.model = [ModelAccount() for _ in range(ACCOUNTS)]
        self.model_holds: dict[int, ModelHold] = {}

    @initialize()
    def open_accounts(self) -> None:
        self.account_ids = [
            create_person(self.app, f"machine-{self.serial}-{n}@example.com").account_id
            for n in range(ACCOUNTS)
        ]

    def _run(self, operation: Any, **kwargs: Any) -> Any:
        with self.app.app_context():
            try:
                with write_transaction(db.session):
                    return operation(db.session, context=TEST_CONTEXT, now=self.now, **kwargs)
            finally:
                db.session.remove()

    def _job(self, name: str) -> None:
        with self.app.app_context():
            try:
                run_job(name, db.session, now=self.now, actor="machine", settings=self.app.config)
            finally:
                db.session.remove()

    @rule(account=accounts, amount=amounts, expires_in=st.none() | durations)
    def grant(self, account: int, amount: int, expires_in: int | None) -> None:
        expires_at = None if expires_in is None else self.now + timedelta(seconds=expires_in)
        result = self._run(
            ledger.grant,
            account_id=self.account_ids[account],
            amount=amount,
            source="promo",
            reason="machine",
            expires_at=expires_at,
        )
        model = self.model[account]
        model.write_off(self.now)
        model.grants.append(ModelGrant(result.grant_id, expires_at, amount))

    @rule(account=accounts, amount=amounts)
    def refund(self, account: int, amount: int) -> None:
        result = self._run(
            ledger.refund,
            account_id=self.account_ids[account],
            amount=amount,
            reason="machine",
            reference="machine",
        )
        model = self.model[account]
        model.write_off(self.now)
        model.grants.append(ModelGrant(result.grant_id, None, amount))

    @rule(account=accounts, amount=st.integers(min_value=-20 * CR, max_value=20 * CR).filter(bool))
    def adjust(self, account: int, amount: int) -> None:
        model = copy.deepcopy(self.model[account])
        model.write_off(self.now)
        try:
            self._run(
                ledger.adjust, account_id=self.account_ids[account], amount=amount, reason="m"
            )
        except BalanceWouldGoNegative:
            assert -amount > model.available  # refused, and the write-off rolled back with it
            return
        if amount > 0:
            grant_id = self._newest_grant(account)
            model.grants.append(ModelGrant(grant_id, None, amount))
        else:
            assert -amount <= model.available
            model.draw(-amount, self.now, expired_too=False)
        self.model[account] = model

    @rule(target=holds, account=accounts, amount=amounts)
    def hold(self, account: int, amount: int) -> Any:
        model = copy.deepcopy(self.model[account])
        model.write_off(self.now)
        try:
            held = self._run(
                ledger.hold, account_id=self.account_ids[account], amount=amount, ttl=HOLD_TTL
            )
        except InsufficientCredits as refused:
            assert amount > model.available
            assert refused.available == model.available
            return multiple()
        assert amount <= model.available
        model.reserved += amount
        self.model[account] = model
        self.model_holds[held.hold_id] = ModelHold(account, amount, self.now + HOLD_TTL)
        return held.hold_id

    @rule(hold_id=consumes(holds), actual=st.integers(min_value=0, max_value=25 * CR))
    def settle(self, hold_id: int, actual: int) -> None:
        held = self.model_holds.pop(hold_id)
        model = self.model[held.account]
        model.write_off(self.now)
        if not held.expired:
            model.reserved -= held.amount
        captured = min(actual, model.available)
        # A live hold may spend expired credits it reserved; a late settle reserved none.
        model.draw(captured, self.now, expired_too=not held.expired)
        model.write_off(self.now)
        outcome = self._run(ledger.settle, hold_id=hold_id, actual=actual)
        assert (outcome.applied, outcome.late) == (True, held.expired)
        assert (outcome.captured, outcome.uncollected) == (captured, actual - captured)
        again = self._run(ledger.settle, hold_id=hold_id, actual=actual + 1)
        assert (again.applied, again.captured) == (False, captured)

    @rule(hold_id=consumes(holds))
    def void(self, hold_id: int) -> None:
        held = self.model_holds.pop(hold_id)
        outcome = self._run(ledger.void, hold_id=hold_id)
        assert outcome.applied == (not held.expired)
        if not held.expired:
            model = self.model[held.account]
            model.write_off(self.now)
            model.reserved -= held.amount
            model.write_off(self.now)

    @rule()
    def expire_holds(self) -> None:
        self._job("expire-holds")
        for held in sorted(self.model_holds.values(), key=lambda h: h.expires_at):
            if not held.expired and held.expires_at <= self.now:
                model = self.model[held.account]
                model.write_off(self.now)
                model.reserved -= held.amount
                model.write_off(self.now)
                held.expired = True

    @rule()
    def expire_grants(self) -> None:
        self._job("expire-grants")
        for model in self.model:
            model.write_off(self.now)

    @rule(seconds=durations)
    def advance_time(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    def _newest_grant(self, account: int) -> int:
        with self.app.app_context():
            try:
                return int(
                    db.session.scalar(
                        select(Grant.id)
                        .where(Grant.account_id == self.account_ids[account])
                        .order_by(Grant.id.desc())
                        .limit(1)
                    )
                )
            finally:
                db.session.remove()

    @invariant()
    def ledger_matches_the_model(self) -> None:
        if not hasattr(self, "account_ids"):
            return
        with self.app.app_context():
            try:
                assert ledger.reconcile(db.session, account_ids=self.account_ids) == []
                for account_id, model in zip(self.account_ids, self.model, strict=True):
                    stored = dict(
                        db.session.execute(
                            select(Grant.id, Grant.remaining).where(Grant.account_id == account_id)
                        ).all()
                    )
                    assert stored == {g.grant_id: g.remaining for g in model.grants}
                    account = db.session.get(Account, account_id)
                    assert (account.balance, account.reserved) == (model.balance, model.reserved)
                    # What a client sees now: expired credits already gone.
                    seen = copy.deepcopy(model)
                    seen.write_off(self.now)
                    view = ledger.balance(db.session, account_id=account_id, now=self.now)
                    assert view == ledger.Balance(seen.balance, seen.reserved)
            finally:
                db.session.remove()


def _run(app: Flask, *, fixed: bool, machine_seed: int | None = None) -> None:
    serial = [0]

    def machine() -> LedgerMachine:
        return LedgerMachine(app, serial)

    if machine_seed is not None:
        machine = seed(machine_seed)(machine)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            derandomize=fixed,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_the_fixed_programs(app: Flask) -> None:
    _run(app, fixed=True)


def test_fresh_programs_from_a_printed_seed(app: Flask, record_property: Any) -> None:
    machine_seed = int(os.environ.get("LEDGER_MACHINE_SEED") or random.getrandbits(32))
    record_property("ledger_machine_seed", machine_seed)
    print(f"\nledger state machine: LEDGER_MACHINE_SEED={machine_seed}", file=sys.stderr)
    try:
        _run(app, fixed=False, machine_seed=machine_seed)
    except BaseException:
        pytest.fail(f"replay with LEDGER_MACHINE_SEED={machine_seed}", pytrace=True)
