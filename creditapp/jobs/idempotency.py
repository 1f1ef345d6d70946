"""Idempotency purge: keys past their retention are deleted, with the responses they stored,
in small batches so that no request waits on the job."""

from __future__ import annotations

from datetime import datetime, timedelta

from creditapp import idempotency, ledger
from creditapp.database import DbSession, write_transaction

BATCH = 1000


def run(
    session: DbSession, *, now: datetime, context: ledger.AuditContext, retention: timedelta
) -> dict[str, int]:
    purged = 0
    while True:
        with write_transaction(session):
            deleted = idempotency.purge_expired(session, now=now, retention=retention, limit=BATCH)
        purged += deleted
        if deleted < BATCH:
            return {"purged": purged}
