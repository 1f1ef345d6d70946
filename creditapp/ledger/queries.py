"""What the ledger shows: its grants, entries and audit trail as queries, which the API pages
through newest first (the ledger's writes are `operations`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, select

from creditapp.database import DbSession
from creditapp.ledger.models import Account, AuditRecord, Grant, LedgerEntry


def grants_of(account_id: int) -> Select[Grant]:
    return select(Grant).where(Grant.account_id == account_id)


def live_grants(session: DbSession, *, account_id: int) -> list[Grant]:
    """The account's grants with credits left, newest first."""
    return list(
        session.scalars(
            grants_of(account_id).where(Grant.__table__.c.remaining > 0).order_by(Grant.id.desc())
        )
    )


def entries_of(
    account_id: int,
    *,
    entry_type: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Select[LedgerEntry]:
    """The account's entries, of one type and from `start` to `end` (inclusive) when given."""
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if entry_type is not None:
        query = query.where(LedgerEntry.type == entry_type)
    if start is not None:
        query = query.where(LedgerEntry.created_at >= start)
    return query if end is None else query.where(LedgerEntry.created_at <= end)


def audit_trail(
    *,
    user_id: int | None = None,
    action: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Select[AuditRecord, int | None]:
    """Audit records with the user owning their account (None for actions on no account or on a
    team's account); `user_id` keeps the records of that user's personal account."""
    # The owner column is what is listed and filtered on, for a whole page in one query (the
    # ledger knows no callers: which account a caller pays from is `creditapp.accounts`).
    query = select(AuditRecord, Account.user_id).outerjoin(
        Account, Account.id == AuditRecord.account_id
    )
    if user_id is not None:
        query = query.where(Account.user_id == user_id)
    if action is not None:
        query = query.where(AuditRecord.action == action)
    if start is not None:
        query = query.where(AuditRecord.created_at >= start)
    if end is not None:
        query = query.where(AuditRecord.created_at <= end)
    return query
