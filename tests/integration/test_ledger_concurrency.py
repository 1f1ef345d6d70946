"""Real threads, real connections, real commits on PostgreSQL: the ledger under contention.

Each thread opens its write transaction and then waits at a barrier, so that all of them run
their operation at the same moment. Any deadlock or serialization error would surface as an
unexpected exception and fail the test.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits
from creditapp.extensions import db
from creditapp.ledger.models import Account, AuditRecord, Grant, LedgerEntry
from tests.conftest import TEST_CONTEXT, utcnow
from tests.helpers import assert_consistent

pytestmark = pytest.mark.postgres_only

CR = 1_000_000
TTL = timedelta(minutes=10)


def at_once(app: Flask, operations: list[Callable[[], Any]]) -> list[Any]:
    """Run each operation in its own thread and transaction, all released together.

    Returns each operation's result, or the expected domain exception it raised.
    """
    barrier = threading.Barrier(len(operations))

    def worker(operation: Callable[[], Any]) -> Any:
        with app.app_context():
            try:
                with write_transaction(db.session):
                    barrier.wait(timeout=60)
                    return operation()
            except (InsufficientCredits, BalanceWouldGoNegative) as refused:
                return refused
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=len(operations)) as pool:
        return list(pool.map(worker, operations))


def test_64_concurrent_holds_succeed_exactly_as_often_as_affordable(app, person_factory) -> None:
    affordable = 23
    account = person_factory(credits=affordable * 3 * CR).account_id

    def hold() -> Any:
        return ledger.hold(
            db.session,
            account_id=account,
            amount=3 * CR,
            ttl=TTL,
            context=TEST_CONTEXT,
            now=utcnow(),
        )

    results = at_once(app, [hold] * 64)
    outcomes = Counter(type(result).__name__ for result in results)
    assert outcomes == {"HoldResult": affordable, "InsufficientCredits": 64 - affordable}
    with app.app_context():
        assert ledger.balance(db.session, account_id=account, now=utcnow()) == ledger.Balance(
            affordable * 3 * CR, affordable * 3 * CR
        )
    assert_consistent(app)


def test_concurrent_settle_and_void_of_one_hold_resolve_it_once(app, person_factory) -> None:
    account = person_factory(credits=10 * CR).account_id
    with app.app_context(), write_transaction(db.session):
        hold_id = ledger.hold(
            db.session,
            account_id=account,
            amount=4 * CR,
            ttl=TTL,
            context=TEST_CONTEXT,
            now=utcnow(),
        ).hold_id

    def settle() -> ledger.Resolution:
        return ledger.settle(
            db.session, hold_id=hold_id, actual=3 * CR, context=TEST_CONTEXT, now=utcnow()
        )

    def void() -> ledger.Resolution:
        return ledger.void(db.session, hold_id=hold_id, context=TEST_CONTEXT, now=utcnow())

    results = at_once(app, [settle, void] * 8)
    winners = [result for result in results if result.applied]
    assert len(winners) == 1
    # Every caller sees the one outcome that stands.
    assert {(r.status, r.captured) for r in results} == {(winners[0].status, winners[0].captured)}
    expected_balance = 7 * CR if winners[0].status == "settled" else 10 * CR
    with app.app_context():
        assert ledger.balance(db.session, account_id=account, now=utcnow()) == ledger.Balance(
            expected_balance, 0
        )
    assert_consistent(app)


def test_concurrent_refreshes_of_one_period_grant_once(app, person_factory) -> None:
    account = person_factory().account_id
    now = utcnow()

    def refresh() -> ledger.GrantResult:
        return ledger.refresh(
            db.session,
            account_id=account,
            period="2026-11",
            amount=100 * CR,
            expires_at=now + timedelta(days=30),
            context=TEST_CONTEXT,
            now=now,
        )

    results = at_once(app, [refresh] * 16)
    assert sum(result.created for result in results) == 1
    assert len({result.grant_id for result in results}) == 1
    with app.app_context():
        assert db.session.execute(select(Grant.amount)).scalars().all() == [100 * CR]
    assert_consistent(app)


def test_mixed_operations_on_one_hot_account_keep_every_invariant(app, person_factory) -> None:
    account = person_factory(credits=200 * CR).account_id
    rng = random.Random(7)

    def session_of_work(seed: int) -> Counter[str]:
        """Random operations; returns what they granted, charged and took by adjustment."""
        local = random.Random(seed)
        moved: Counter[str] = Counter()
        for _ in range(25):
            now = utcnow()
            choice = local.random()
            with write_transaction(db.session):
                if choice < 0.6:
                    try:
                        held = ledger.hold(
                            db.session,
                            account_id=account,
                            amount=local.randint(1, 5 * CR),
                            ttl=TTL,
                            context=TEST_CONTEXT,
                            now=now,
                        )
                    except InsufficientCredits:
                        continue
                    pending = held.hold_id
                elif choice < 0.8:
                    amount = local.randint(1, 3 * CR)
                    moved["granted"] += amount
                    ledger.grant(
                        db.session,
                        account_id=account,
                        amount=amount,
                        source="promo",
                        reason="stress",
                        context=TEST_CONTEXT,
                        now=now,
                        expires_at=now + timedelta(seconds=local.randint(1, 5)),
                    )
                    continue
                else:
                    amount = local.randint(1, CR)
                    with contextlib.suppress(BalanceWouldGoNegative):
                        ledger.adjust(
                            db.session,
                            account_id=account,
                            amount=-amount,
                            reason="stress",
                            context=TEST_CONTEXT,
                            now=now,
                        )
                        moved["adjusted"] += amount
                    continue
            with write_transaction(db.session):
                if local.random() < 0.7:
                    moved["charged"] += ledger.settle(
                        db.session,
                        hold_id=pending,
                        actual=local.randint(0, 6 * CR),
                        context=TEST_CONTEXT,
                        now=utcnow(),
                    ).captured
                else:
                    ledger.void(db.session, hold_id=pending, context=TEST_CONTEXT, now=utcnow())
        return moved

    seeds = [rng.randint(0, 10**6) for _ in range(8)]
    moved = sum(at_once(app, [partial(session_of_work, seed) for seed in seeds]), Counter())
    assert moved["granted"] and moved["charged"]
    assert_consistent(app)
    with app.app_context():
        assert ledger.balance(db.session, account_id=account, now=utcnow()).reserved == 0
        stored = db.session.get(Account, account).balance
        expired = -db.session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == account, LedgerEntry.type == "expire"
            )
        )
        db.session.remove()
    # Conservation: every credit granted is still there, or was charged, adjusted or expired.
    initial = 200 * CR
    assert stored == initial + moved["granted"] - moved["charged"] - moved["adjusted"] - expired


def test_entry_times_never_go_backwards_along_an_account_chain(app, person_factory) -> None:
    account = person_factory(credits=100 * CR).account_id
    start = utcnow()

    # Each operation's time is taken before it waits for the account's lock (as a request's
    # is), a millisecond apart, and all of them then race for the lock.
    def operation(index: int) -> Callable[[], Any]:
        now = start + timedelta(milliseconds=index)
        if index % 2:
            return partial(
                ledger.grant,
                db.session,
                account_id=account,
                amount=CR,
                source="promo",
                reason="race",
                context=TEST_CONTEXT,
                now=now,
            )
        return partial(
            ledger.adjust,
            db.session,
            account_id=account,
            amount=-CR,
            reason="race",
            context=TEST_CONTEXT,
            now=now,
        )

    at_once(app, [operation(index) for index in range(16)])
    with app.app_context():
        chain = db.session.execute(
            select(LedgerEntry.seq, LedgerEntry.created_at, AuditRecord.created_at)
            .join(AuditRecord, AuditRecord.id == LedgerEntry.audit_id)
            .where(LedgerEntry.account_id == account)
            .order_by(LedgerEntry.seq)
        ).all()
        db.session.remove()
    assert len(chain) == 17
    times = [entry_time for _seq, entry_time, _audit_time in chain]
    assert times == sorted(times)
    assert all(entry_time == audit_time for _seq, entry_time, audit_time in chain)
    assert_consistent(app)
