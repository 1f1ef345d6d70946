"""Reconciliation: check every ledger invariant of every account, store and log the report,
with the calls never billed and the purchases whose refund found the credits spent (their
shortfall). It never changes a balance: drift is for people to look at."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import func, select

from creditapp import ledger, purchases
from creditapp.billing.models import UnbilledUsage
from creditapp.database import DbSession, snapshot, write_transaction
from creditapp.jobs.models import ReconciliationReport
from creditapp.ledger.models import Account
from creditapp.money import format_credits

log = structlog.get_logger(__name__)


def run(session: DbSession, *, now: datetime, context: ledger.AuditContext) -> dict[str, Any]:
    with snapshot(session):
        checked = session.scalar(select(func.count()).select_from(Account)) or 0
        drift = ledger.reconcile(session)
        unbilled_calls, unbilled_cost = session.execute(
            select(func.count(), func.coalesce(func.sum(UnbilledUsage.cost), 0))
        ).one()
        shortfalls = [
            {
                "purchase_id": str(purchase.id),
                "user_id": str(purchase.user_id),
                "status": purchase.status,
                "shortfall": format_credits(purchase.shortfall),
            }
            for purchase in session.scalars(purchases.with_shortfall())
        ]
    for shortfall in shortfalls:
        log.warning("purchase_shortfall", **shortfall)
    if unbilled_calls:
        log.warning("unbilled_usage", calls=unbilled_calls, cost=int(unbilled_cost))
    for item in drift:
        log.error(
            "ledger_drift",
            account_id=item.account_id,
            user_id=item.user_id,
            team_id=item.team_id,
            invariant=item.invariant,
            expected=item.expected,
            actual=item.actual,
        )
    with write_transaction(session):
        session.add(
            ReconciliationReport(
                ran_at=now,
                checked_accounts=checked,
                drift=[item.as_wire() for item in drift],
                unbilled_calls=unbilled_calls,
                unbilled_cost=int(unbilled_cost),
                shortfalls=shortfalls,
            )
        )
    return {
        "checked_accounts": checked,
        "drift": len(drift),
        "unbilled_calls": unbilled_calls,
        "shortfalls": len(shortfalls),
    }


def latest(session: DbSession) -> ReconciliationReport:
    """The newest report; before the first run, an empty one whose `ran_at` is None."""
    report = session.scalars(
        select(ReconciliationReport).order_by(ReconciliationReport.id.desc()).limit(1)
    ).first()
    if report is None:
        return ReconciliationReport(
            ran_at=None,
            checked_accounts=0,
            drift=[],
            unbilled_calls=0,
            unbilled_cost=0,
            shortfalls=[],
        )
    return report


def request_run(session: DbSession, *, context: ledger.AuditContext, now: datetime) -> None:
    """Audit an admin's request to reconcile now (the job itself runs on a worker)."""
    ledger.record_action(
        session, action="reconciliation_requested", context=context, now=now, details={}
    )
