"""What the ledger shows: its grants, entries and audit trail as queries, which the API pages
through newest first (the ledger's writes are `operations`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    user_id: int | None = None,
) -> Select[LedgerEntry]:
    """The account's entries, of one type, from `start` to `end` (inclusive), caused by
    `user_id` (a team member's own), when given."""
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if user_id is not None:
        query = query.where(LedgerEntry.user_id == user_id)
    if entry_type is not None:
        query = query.where(LedgerEntry.type == entry_type)
    if start is not None:
        query = query.where(LedgerEntry.created_at >= start)
    return query if end is None else query.where(LedgerEntry.created_at <= end)


@dataclass(frozen=True)
class EntryGrounds:
    """What the ledger knows an entry was for: the grant it moved (its source, and the reason
    or period it was given for) and its action's audit details (an adjustment's reason)."""

    grant_source: str
    grant_reason: str | None
    grant_period: str | None
    details: dict[str, Any]


def entry_grounds(session: DbSession, *, entry_ids: list[int]) -> dict[int, EntryGrounds]:
    """The grounds of each of the entries, by entry id, in one query."""
    if not entry_ids:
        return {}
    rows = session.execute(
        select(LedgerEntry.id, Grant.source, Grant.reason, Grant.period, AuditRecord.details)
        .join(Grant, Grant.id == LedgerEntry.grant_id)
        .join(AuditRecord, AuditRecord.id == LedgerEntry.audit_id)
        .where(LedgerEntry.id.in_(entry_ids))
    )
    return {
        entry_id: EntryGrounds(source, reason, period, details or {})
        for entry_id, source, reason, period, details in rows
    }


# The entries that open a grant: every grant has exactly one, of one of these types.
OPENING_TYPES = ("grant", "refresh", "adjust", "refund", "transfer_in")


def grant_origins(session: DbSession, *, grant_ids: list[int]) -> dict[int, str]:
    """The type of the entry that opened each of the grants: a refund's grant (source `admin`)
    is opened by a `refund` entry, a positive adjustment's by an `adjust` one."""
    if not grant_ids:
        return {}
    rows = session.execute(
        select(LedgerEntry.grant_id, LedgerEntry.type).where(
            LedgerEntry.grant_id.in_(grant_ids),
            LedgerEntry.type.in_(OPENING_TYPES),
            LedgerEntry.amount > 0,
        )
    )
    return {grant_id: entry_type for grant_id, entry_type in rows}


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
