"""Refunds of a call's charge: recorded once per usage record, paid exactly once.

A compensation is recorded in the transaction that finds it owed, and paid in a later one
(at once when possible, else by the retry job). Paying starts with a conditional UPDATE of the
compensation's status, so of two workers paying the same compensation only one refunds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, case, select, update
from sqlalchemy.exc import IntegrityError

from creditapp import ledger
from creditapp.billing.models import Compensation, UsageRecord
from creditapp.database import DbSession
from creditapp.errors import AlreadyRefunded, Conflict
from creditapp.ledger.models import Account
from creditapp.stored_text import fitted


def get_all(*, status: str | None = None) -> Select[Compensation, int | None]:
    """Compensations with the user they are owed to: the owner of the account refunded, None
    when a team owns it."""
    # The owner column itself is what is listed (one join for the whole page), not a lookup of
    # which account pays: the accounts seam answers the other way round.
    query = select(Compensation, Account.user_id).join(
        Account, Account.id == Compensation.account_id
    )
    return query if status is None else query.where(Compensation.status == status)


def record(
    session: DbSession,
    *,
    usage: UsageRecord,
    reason: str,
    requested_by: str,
    now: datetime,
) -> Compensation:
    """Owe the account the usage record's charge (the caller's transaction). The reason is
    stored cut to its column: callers compose it around an admin's text."""
    if usage.credits_charged <= 0:
        raise Conflict("Nothing was charged for this call.")
    compensation = Compensation(
        account_id=usage.account_id,
        usage_id=usage.id,
        amount=usage.credits_charged,
        reason=fitted(reason, Compensation.reason),
        status="pending",
        attempts=0,
        next_attempt_at=now,
        requested_by=requested_by,
        created_at=now,
    )
    session.add(compensation)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as error:  # one per usage record (a unique key): already owed
        raise AlreadyRefunded() from error
    return compensation


def pay(
    session: DbSession, *, compensation_id: int, context: ledger.AuditContext, now: datetime
) -> bool:
    """Refund a pending compensation; False if someone else already paid it."""
    claimed = session.execute(
        update(Compensation)
        .where(
            Compensation.id == compensation_id,
            Compensation.status.in_(("pending", "processing")),
        )
        .values(
            status="completed",
            completed_at=now,
            # A run's claim (`processing`) counted its attempt already; paying at once did not.
            attempts=case(
                (Compensation.status == "pending", Compensation.attempts + 1),
                else_=Compensation.attempts,
            ),
        )
        .returning(
            Compensation.account_id,
            Compensation.amount,
            Compensation.reason,
            Compensation.usage_id,
        )
    ).one_or_none()
    if claimed is None:
        return False
    account_id, amount, reason, usage_id = claimed
    ledger.refund(
        session,
        account_id=account_id,
        amount=amount,
        reason=reason,
        reference=f"compensation:{compensation_id}",
        context=context,
        now=now,
        # The refund names whoever made the call (on a team's account: the member).
        user_id=session.scalar(select(UsageRecord.user_id).where(UsageRecord.id == usage_id)),
    )
    return True


def refund_usage(
    session: DbSession,
    *,
    usage: UsageRecord,
    reason: str,
    context: ledger.AuditContext,
    now: datetime,
) -> Compensation:
    """An admin's refund of a call's charge, paid at once: `reason` says which call and why."""
    compensation = record(
        session,
        usage=usage,
        reason=reason,
        requested_by=f"{context.actor_type}:{context.actor_id}",
        now=now,
    )
    pay(session, compensation_id=compensation.id, context=context, now=now)
    session.refresh(compensation)
    return compensation
