"""Grant expiry: an idle account's expired credits are written off by this job, not only by the
account's next operation. What open holds placed before the expiry still need stays payable to
them (contract section 2); the rest goes with an `expire` entry. The job also announces grants
about to expire (`grant.expiring`, once per grant, to accounts someone listens to)."""

from __future__ import annotations

from datetime import datetime, timedelta

from creditapp import ledger
from creditapp.database import DbSession, write_transaction
from creditapp.ledger import alerts

BATCH = 500


def run(
    session: DbSession, *, now: datetime, context: ledger.AuditContext, notice: timedelta
) -> dict[str, int]:
    announced = 0
    while True:
        with write_transaction(session):
            batch = alerts.announce_expiring_grants(session, now=now, notice=notice, limit=BATCH)
        announced += batch
        if batch < BATCH:
            break
    return {**_write_off(session, now=now, context=context), "expiring_announced": announced}


def _write_off(
    session: DbSession, *, now: datetime, context: ledger.AuditContext
) -> dict[str, int]:
    accounts = 0
    written_off = 0
    after = 0
    while True:
        # Walked by account id, so that an account whose expired credits open holds still need
        # is looked at once per run rather than found again by every batch.
        account_ids = ledger.accounts_with_expired_credits(
            session, now=now, after=after, limit=BATCH
        )
        session.rollback()
        if not account_ids:
            return {"accounts": accounts, "written_off": written_off}
        for account_id in account_ids:
            # One account a transaction: its lock is held for one write-off, never a batch. A
            # concurrent run (or operation) that wrote it off first leaves nothing to do here.
            with write_transaction(session):
                amount = ledger.expire_grants(
                    session, account_id=account_id, context=context, now=now
                )
            accounts += amount > 0
            written_off += amount
        after = account_ids[-1]
