"""A Hypothesis state machine drives the ledger through random programs on several accounts and,
after every step, compares it grant by grant with a model of its own.

The model knows the rules of contract section 2 and nothing of the code: grants with an amount,
an expiry and a remainder, drawn soonest-expiring first (never-expiring last), then oldest; holds
that reserve; expired credits written off by the next operation on the account, except what
open holds placed before the expiry claim of them (a hold draws the soonest-expiring grants
first: its reservation falls on them in draw order); late settles that take what is available. Time
moves by seconds, hours or days, so expiries fall between, on and just after operations.

A team's account is one more in the programs. The owners of the personal accounts fund it by
transfers (drawn like a charge, each part arriving with its expiry; refused above what is
available, changing nothing) and spend from it, each held to a daily member cap of their own
(a hold refused when the member's spending today, their open holds and it would pass the cap; a
settle capturing no more than the cap leaves room for). Credits are only ever granted, charged,
written off or adjusted away: transfers conserve them.

Every account has low-balance thresholds: after each operation the model fires the events the
contract asks for (a threshold crossed strictly below while armed, re-armed strictly above it,
depletion at zero), and the outbox must hold exactly those, in order.

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
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import (
    AmountNotPositive,
    BalanceWouldGoNegative,
    InsufficientCredits,
    MemberCapReached,
)
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger import alerts, caps
from creditapp.ledger.models import Account, Grant, LedgerEntry
from creditapp.money import format_credits
from creditapp.signals.models import WebhookEvent
from tests.conftest import TEST_CONTEXT, create_person
from tests.helpers import new_team

CR = 1_000_000
ACCOUNTS = 3  # personal accounts; their users are the team's members
TEAM = ACCOUNTS  # the team's account, the last in the model
# Each member's daily cap on the team: one that refuses often, one now and then, one rarely.
MEMBER_CAPS = (10 * CR, 30 * CR, 60 * CR)
HOLD_TTL = timedelta(minutes=30)
# Every account's low-balance thresholds, highest first.
THRESHOLDS = (40 * CR, 15 * CR, 5 * CR)
# 70 programs: with a team account, transfers and caps in each step, about the time 100 took
# before them. More for a longer search: LEDGER_MACHINE_EXAMPLES=500.
EXAMPLES = int(os.environ.get("LEDGER_MACHINE_EXAMPLES", 70))

accounts = st.integers(min_value=0, max_value=TEAM)
members = st.integers(min_value=0, max_value=ACCOUNTS - 1)
amounts = st.integers(min_value=1, max_value=20 * CR)
# A transfer of an amount, or of exactly what is available, or of one micro-credit more.
ALL, ONE_MORE = "all", "all and one more"
transfer_amounts = st.one_of(amounts, st.sampled_from([ALL, ONE_MORE]))
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
    member: int | None = None  # whose cap it is counted in (a member's hold on the team)


@dataclass
class ModelAccount:
    """What one account must hold, by the contract's rules alone."""

    grants: list[ModelGrant] = field(default_factory=list)  # in the order they were made
    reserved: int = 0
    # The open holds on the account: when each was placed, and its amount.
    open_holds: dict[int, tuple[datetime, int]] = field(default_factory=dict)
    written_off: int = 0
    # Low-balance alerts: the armed thresholds, available when last looked at, and the events
    # (type, threshold, available) its operations must have emitted so far. Opened at zero,
    # below every threshold: none is armed until credits rise above it.
    armed: set[int] = field(default_factory=set)
    seen_available: int = 0
    events: list[tuple[str, str | None, str]] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return sum(g.remaining for g in self.grants)

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def alert(self) -> None:
        """The events of one operation that moved available from `seen_available`."""
        now_available = self.available
        if now_available == self.seen_available:
            return
        for threshold in THRESHOLDS:
            if threshold in self.armed and now_available < threshold:
                self.armed.discard(threshold)
                low = ("balance.low", format_credits(threshold), format_credits(now_available))
                self.events.append(low)
            elif threshold not in self.armed and now_available > threshold:
                self.armed.add(threshold)
        if self.seen_available > 0 and now_available == 0:
            self.events.append(("balance.depleted", None, "0"))
        self.seen_available = now_available

    def draw_order(self) -> list[ModelGrant]:
        # Soonest expiry first, never-expiring last; among equals the oldest (list order).
        far_future = datetime.max.replace(tzinfo=UTC)
        return sorted(self.grants, key=lambda g: g.expires_at or far_future)

    def write_off(self, now: datetime) -> None:
        """Expired remainders go, in draw order, except what open holds placed before a grant's
        expiry claim of it: their reservations fall on the grants in draw order (what earlier
        grants keep for them is not claimed again); never more than is available."""
        expired = [g for g in self.draw_order() if g.expired(now)]
        writable = self.available
        claimed = 0
        for grant in expired:
            assert grant.expires_at is not None
            placed_before = sum(
                amount for placed, amount in self.open_holds.values() if placed < grant.expires_at
            )
            kept = min(grant.remaining, max(placed_before - claimed, 0))
            claimed += kept
            written = min(grant.remaining - kept, writable)
            grant.remaining -= written
            self.written_off += written
            writable -= written

    def draw(
        self, amount: int, now: datetime, *, held_since: datetime | None = None
    ) -> list[tuple[datetime | None, int]]:
        """Take `amount` in draw order; the parts taken, with their grant's expiry."""
        parts = []
        for grant in self.draw_order():
            # An expired grant only for a live hold placed while it was valid.
            if grant.expired(now) and not (
                held_since is not None
                and grant.expires_at is not None
                and held_since < grant.expires_at
            ):
                continue
            taken = min(grant.remaining, amount)
            grant.remaining -= taken
            amount -= taken
            if taken:
                parts.append((grant.expires_at, taken))
        assert amount == 0, "the model drew more than there was"
        return parts


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self, app: Flask, serial: list[int]):
        super().__init__()
        self.app = app
        serial[0] += 1
        self.serial = serial[0]
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.model = [ModelAccount() for _ in range(ACCOUNTS + 1)]
        self.model_holds: dict[int, ModelHold] = {}
        # (settled at, captured) of each member's settled holds on the team.
        self.member_settles: list[list[tuple[datetime, int]]] = [[] for _ in range(ACCOUNTS)]
        # Where credits came from and went, in all: granted (grants, refunds, adjustments up),
        # charged, and taken by adjustments down (written off: each account's own).
        self.granted = self.charged = self.taken = 0

    @initialize()
    def open_accounts(self) -> None:
        people = [
            create_person(self.app, f"machine-{self.serial}-{n}@example.com")
            for n in range(ACCOUNTS)
        ]
        self.user_ids = [person.id for person in people]
        self.account_ids = [person.account_id for person in people]
        with self.app.app_context():
            _team_id, team_account = new_team(self.user_ids[0], name=f"machine-{self.serial}")
            with write_transaction(db.session):
                self.cap_ids = [
                    caps.open_cap(
                        db.session,
                        account_id=team_account,
                        kind="member",
                        ceiling=ceiling,
                        period="day",
                        now=self.now,
                    )
                    for ceiling in MEMBER_CAPS
                ]
            db.session.remove()
        self.account_ids.append(team_account)
        with self.app.app_context():
            for account_id in self.account_ids:
                with write_transaction(db.session):
                    alerts.set_thresholds(
                        db.session, account_id=account_id, amounts=list(THRESHOLDS), now=self.now
                    )
            db.session.remove()

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
        self.granted += amount

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
        self.granted += amount

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
            self.granted += amount
        else:
            assert -amount <= model.available
            model.draw(-amount, self.now)
            self.taken -= amount
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
        model.open_holds[held.hold_id] = (self.now, amount)
        self.model[account] = model
        self.model_holds[held.hold_id] = ModelHold(account, amount, self.now + HOLD_TTL)
        return held.hold_id

    @rule(target=holds, member=members, amount=amounts)
    def member_hold(self, member: int, amount: int) -> Any:
        """A member's hold on the team's account, counted in their cap."""
        model = copy.deepcopy(self.model[TEAM])
        model.write_off(self.now)
        spent, reserved = self._cap_use(member)
        try:
            held = self._run(
                ledger.hold,
                account_id=self.account_ids[TEAM],
                amount=amount,
                ttl=HOLD_TTL,
                caps=(self.cap_ids[member],),
                spender=self.user_ids[member],
            )
        except MemberCapReached as refused:  # the cap is asked first (locks: caps, account)
            assert spent + reserved + amount > MEMBER_CAPS[member]
            assert (refused.details["spent"], refused.details["reserved"]) == (
                format_credits(spent),
                format_credits(reserved),
            )
            return multiple()
        except InsufficientCredits as refused:
            assert spent + reserved + amount <= MEMBER_CAPS[member]
            assert amount > model.available
            assert refused.available == model.available
            return multiple()
        assert amount <= model.available
        assert spent + reserved + amount <= MEMBER_CAPS[member]
        model.reserved += amount
        model.open_holds[held.hold_id] = (self.now, amount)
        self.model[TEAM] = model
        self.model_holds[held.hold_id] = ModelHold(TEAM, amount, self.now + HOLD_TTL, member=member)
        standing = self._cap_standing(member)
        assert standing.spent + standing.reserved <= MEMBER_CAPS[member]
        return held.hold_id

    @rule(member=members, asked=transfer_amounts)
    def transfer(self, member: int, asked: int | str) -> None:
        """A member funds the team from their personal account."""
        source = copy.deepcopy(self.model[member])
        team = copy.deepcopy(self.model[TEAM])
        source.write_off(self.now)
        team.write_off(self.now)
        amount = asked if isinstance(asked, int) else source.available + (asked == ONE_MORE)
        newest = self._newest_grant(TEAM)
        try:
            moved = self._run(
                ledger.transfer,
                from_account=self.account_ids[member],
                to_account=self.account_ids[TEAM],
                amount=amount,
                user_id=self.user_ids[member],
                references=("to the team", "from a member"),
            )
        except InsufficientCredits as refused:
            # Refused whole: neither account changed, their write-offs rolled back too.
            assert amount > source.available
            assert refused.available == source.available
            return
        except AmountNotPositive:
            assert amount == 0
            return
        assert 0 < amount <= source.available
        # Each part arrives as a grant of its own expiry, in the order they were drawn.
        arriving: dict[datetime | None, int] = {}
        for expires_at, part in source.draw(amount, self.now):
            arriving[expires_at] = arriving.get(expires_at, 0) + part
        with self.app.app_context():
            try:
                new_grants = db.session.execute(
                    select(Grant.id, Grant.expires_at, Grant.amount, Grant.source)
                    .where(Grant.account_id == self.account_ids[TEAM], Grant.id > newest)
                    .order_by(Grant.id)
                ).all()
            finally:
                db.session.remove()
        assert [(at, part, source_) for _id, at, part, source_ in new_grants] == [
            (at, part, "transfer") for at, part in arriving.items()
        ]
        team.grants += [ModelGrant(grant_id, at, part) for grant_id, at, part, _ in new_grants]
        assert moved == ledger.TransferResult(
            ledger.Balance(source.balance, source.reserved),
            ledger.Balance(team.balance, team.reserved),
        )
        self.model[member], self.model[TEAM] = source, team

    @rule(hold_id=consumes(holds), actual=st.integers(min_value=0, max_value=25 * CR))
    def settle(self, hold_id: int, actual: int) -> None:
        held = self.model_holds[hold_id]
        # A hold in a cap captures what it releases (nothing, late) and the room the cap has.
        cap_allows = actual
        if held.member is not None:
            spent, reserved = self._cap_use(held.member)
            room = max(MEMBER_CAPS[held.member] - spent - reserved, 0)
            cap_allows = (0 if held.expired else held.amount) + room
        del self.model_holds[hold_id]
        model = self.model[held.account]
        model.write_off(self.now)
        placed = None
        if not held.expired:
            model.reserved -= held.amount
            placed, _amount = model.open_holds.pop(hold_id)
        captured = min(actual, model.available, cap_allows)
        if held.member is not None:
            self.member_settles[held.member].append((self.now, captured))
        self.charged += captured
        # A live hold may spend what expired after it was placed; a late settle, nothing expired.
        model.draw(captured, self.now, held_since=placed)
        model.write_off(self.now)
        outcome = self._run(ledger.settle, hold_id=hold_id, actual=actual)
        assert (outcome.applied, outcome.late) == (True, held.expired)
        assert (outcome.captured, outcome.uncollected) == (captured, actual - captured)
        # The account as the settle left it is what a read of it says now (a metered call
        # answers with it instead of reading it again).
        assert outcome.balance == ledger.Balance(model.balance, model.reserved)
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
            del model.open_holds[hold_id]
            model.write_off(self.now)

    @rule()
    def expire_holds(self) -> None:
        self._job("expire-holds")
        for hold_id, held in sorted(self.model_holds.items(), key=lambda item: item[1].expires_at):
            if not held.expired and held.expires_at <= self.now:
                model = self.model[held.account]
                model.write_off(self.now)
                model.reserved -= held.amount
                del model.open_holds[hold_id]
                model.write_off(self.now)
                model.alert()  # one operation per hold
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
        """The id of the account's newest grant (0: none yet)."""
        with self.app.app_context():
            try:
                return int(
                    db.session.scalar(
                        select(Grant.id)
                        .where(Grant.account_id == self.account_ids[account])
                        .order_by(Grant.id.desc())
                        .limit(1)
                    )
                    or 0
                )
            finally:
                db.session.remove()

    def _cap_use(self, member: int) -> tuple[int, int]:
        """What the member spent today, and what their live holds reserve."""
        today = caps.period_starts(self.now)["day"]
        spent = sum(captured for at, captured in self.member_settles[member] if at >= today)
        reserved = sum(
            held.amount
            for held in self.model_holds.values()
            if held.member == member and not held.expired
        )
        return spent, reserved

    def _cap_standing(self, member: int) -> caps.CapStanding:
        with self.app.app_context():
            try:
                return caps.standing(db.session, cap_id=self.cap_ids[member], now=self.now)
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
                    model.alert()  # the step's one operation on the account, if any
                    assert self._events(account_id) == model.events
                for member, cap_id in enumerate(self.cap_ids):
                    standing = caps.standing(db.session, cap_id=cap_id, now=self.now)
                    assert standing == caps.CapStanding(MEMBER_CAPS[member], *self._cap_use(member))
                self._credits_are_conserved()
            finally:
                db.session.remove()

    @staticmethod
    def _events(account_id: int) -> list[tuple[str, str | None, str]]:
        rows = db.session.scalars(
            select(WebhookEvent)
            .where(
                WebhookEvent.account_id == account_id,
                WebhookEvent.type.in_(("balance.low", "balance.depleted")),
            )
            .order_by(WebhookEvent.id)
        )
        return [(row.type, row.data.get("threshold"), row.data["available"]) for row in rows]

    def _credits_are_conserved(self) -> None:
        """What was granted is in the balances, or was charged, written off or adjusted away:
        transfers only move credits."""
        entries = LedgerEntry.account_id.in_(self.account_ids)
        balances, transferred, charged = db.session.execute(
            select(
                select(func.sum(Account.balance))
                .where(Account.id.in_(self.account_ids))
                .scalar_subquery(),
                select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                .where(entries, LedgerEntry.type.in_(("transfer_out", "transfer_in")))
                .scalar_subquery(),
                select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                .where(entries, LedgerEntry.type == "charge")
                .scalar_subquery(),
            )
        ).one()
        assert (int(transferred), -int(charged)) == (0, self.charged)
        written_off = sum(model.written_off for model in self.model)
        assert int(balances) + self.charged + written_off + self.taken == self.granted


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
