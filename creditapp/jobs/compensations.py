"""Compensation retry: pay what is owed, with exponential backoff, never twice.

A run claims a due compensation with a conditional UPDATE (`processing`, its next attempt
pushed out by a lease), commits, then pays it in a transaction of its own: the refund and the
`completed` status commit together, and paying is conditional on the status, so two workers
cannot both pay. A worker killed after claiming leaves the compensation `processing`; once
the lease runs out a later run takes it again. A payment that fails is retried after
`base * 2^(attempts - 1)`; after `max_attempts` failures the compensation is `failed`, for an
admin to look at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update

from creditapp import ledger
from creditapp.billing import compensations
from creditapp.billing.models import Compensation
from creditapp.database import DbSession, write_transaction
from creditapp.stored_text import fitted

log = structlog.get_logger(__name__)

BATCH = 100
DUE = ("pending", "processing")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: timedelta = timedelta(minutes=1)
    lease: timedelta = timedelta(minutes=5)

    def next_attempt(self, attempts: int, now: datetime) -> datetime:
        return now + self.base_delay * 2 ** max(attempts - 1, 0)


def request_run(session: DbSession, *, context: ledger.AuditContext, now: datetime) -> int:
    """Audit an admin's request to process compensations now; returns how many are due."""
    pending = (
        session.scalar(
            select(func.count()).select_from(Compensation).where(Compensation.status.in_(DUE))
        )
        or 0
    )
    ledger.record_action(
        session,
        action="compensations_requested",
        context=context,
        now=now,
        details={"pending": pending},
    )
    return pending


def _claim(session: DbSession, compensation_id: int, now: datetime, lease: timedelta) -> int | None:
    """Take a due compensation for this run; its attempt count, or None if another run has it."""
    return session.execute(
        update(Compensation)
        .where(
            Compensation.id == compensation_id,
            Compensation.status.in_(DUE),
            Compensation.next_attempt_at <= now,
        )
        .values(
            status="processing",
            attempts=Compensation.attempts + 1,
            next_attempt_at=now + lease,
        )
        .returning(Compensation.attempts)
    ).scalar_one_or_none()


def run(
    session: DbSession,
    *,
    now: datetime,
    context: ledger.AuditContext,
    policy: RetryPolicy = RetryPolicy(),
) -> dict[str, int]:
    paid = failed = retried = 0
    due = list(
        session.scalars(
            select(Compensation.id)
            .where(Compensation.status.in_(DUE), Compensation.next_attempt_at <= now)
            .order_by(Compensation.next_attempt_at, Compensation.id)
            .limit(BATCH)
        )
    )
    session.rollback()
    for compensation_id in due:
        with write_transaction(session):
            attempts = _claim(session, compensation_id, now, policy.lease)
        if attempts is None:
            continue
        try:
            with write_transaction(session):
                paid += compensations.pay(
                    session, compensation_id=compensation_id, context=context, now=now
                )
        except Exception as error:  # the payment failed: retry later, or give up
            give_up = attempts >= policy.max_attempts
            log.warning(
                "compensation_payment_failed",
                compensation_id=compensation_id,
                attempts=attempts,
                gave_up=give_up,
                error=str(error),
            )
            with write_transaction(session):
                session.execute(
                    update(Compensation)
                    .where(Compensation.id == compensation_id, Compensation.status == "processing")
                    .values(
                        status="failed" if give_up else "pending",
                        next_attempt_at=policy.next_attempt(attempts, now),
                        last_error=fitted(str(error), Compensation.last_error),
                    )
                )
            failed += give_up
            retried += not give_up
    return {"paid": paid, "retried": retried, "failed": failed}
