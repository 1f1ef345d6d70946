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
    seen: set[int] = set()
    while True:
        overdue = [
            hold_id
            for hold_id in ledger.overdue_hold_ids(session, now=now, limit=BATCH)
            if hold_id not in seen
        ]
        session.rollback()
        if not overdue:
            break
        for hold_id in overdue:
            seen.add(hold_id)
            with write_transaction(session):
                resolution = ledger.expire_hold(session, hold_id=hold_id, context=context, now=now)
            expired += resolution.applied
    return {"expired": expired}
