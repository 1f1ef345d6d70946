"""Hold expiry: holds past their TTL are voided (a request that never came back, such as a
web worker killed during the provider call). Each hold resolves exactly once, whoever gets
there first."""

from __future__ import annotations

from datetime import datetime

from creditapp import ledger
from creditapp.database import DbSession, write_transaction

BATCH = 500


def run(session: DbSession, *, now: datetime, context: ledger.AuditContext) -> dict[str, int]:
    expired = 0
    while True:
        overdue = ledger.overdue_hold_ids(session, now=now, limit=BATCH)
        session.rollback()
        if not overdue:
            return {"expired": expired}
        for hold_id in overdue:
            # A hold resolved meanwhile (by its request or another run) is left as it is, and
            # no longer overdue.
            with write_transaction(session):
                resolution = ledger.expire_hold(session, hold_id=hold_id, context=context, now=now)
            expired += resolution.applied
