"""Purchase sync (`sync-purchases`): a purchase whose webhook never came is granted anyway.
Purchases pending for more than five minutes (PURCHASE_SYNC_AFTER_SECONDS) are looked up in
Stripe and settled as their webhook would have settled them: paid → granted (exactly once,
whoever is first: the webhook, this job or a second run of it), expired → failed."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from creditapp import ledger, purchases
from creditapp.database import DbSession
from creditapp.errors import PaymentProviderUnavailable, PurchasesUnavailable

# Purchases read at a time (each is then asked of Stripe with no transaction open).
BATCH = 200


def run(
    session: DbSession, *, now: datetime, context: ledger.AuditContext, settings: Any
) -> dict[str, int]:
    try:
        checkout = purchases.checkout_of(settings)
    except PurchasesUnavailable:
        return {"looked_up": 0}  # purchases are not configured: nothing can be pending
    with checkout:
        outcomes = _look_up(session, checkout, purchases.terms_of(settings), context, now)
    session.rollback()
    return {"looked_up": sum(outcomes.values()), **outcomes}


def _look_up(
    session: DbSession,
    checkout: purchases.Checkout,
    terms: purchases.Terms,
    context: ledger.AuditContext,
    now: datetime,
) -> Counter[str]:
    """Every pending purchase, a batch at a time (those still open at Stripe, where a buyer
    has a day to pay, must not keep the ones after them from being looked at); each outcome
    counted. Stripe unavailable: the run stops there, and the next asks again, rather than
    wait on Stripe for each."""
    outcomes: Counter[str] = Counter()
    after = None
    while batch := purchases.pending_too_long(
        session, terms=terms, now=now, after=after, limit=BATCH
    ):
        session.rollback()
        for _created_at, purchase_id in batch:
            try:
                outcome = purchases.sync(
                    session, purchase_id, checkout=checkout, terms=terms, context=context, now=now
                )
            except PaymentProviderUnavailable:
                outcomes["stripe_unavailable"] += 1
                return outcomes
            outcomes[outcome] += 1
        after = batch[-1]
    return outcomes
