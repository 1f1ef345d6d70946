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
    terms = purchases.terms_of(settings)
    outcomes: Counter[str] = Counter()
    looked_up = 0
    after = None
    # Every pending purchase, a batch at a time: those still open at Stripe (a buyer has a day
    # to pay) must not keep the ones after them from being looked at.
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
                outcome = "stripe_unavailable"  # the next run asks again
            outcomes[outcome] += 1
        looked_up += len(batch)
        after = batch[-1]
    session.rollback()
    return {"looked_up": looked_up, **outcomes}
