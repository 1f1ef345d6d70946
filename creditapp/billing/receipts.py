"""Receipts: how a charge came to be, from what is stored, so that anyone can check it by hand.

A charge's ledger entries point to the hold they settled; the hold's usage record keeps the
call's normalized usage, the price row that priced it, its exact cost and what the account
paid. The receipt recomputes the arithmetic line by line from those (`book.Rates.lines`, the
code that charged it) and shows the rounding up to the micro-credit and what the hold released.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from creditapp.billing.models import UsageRecord
from creditapp.database import DbSession
from creditapp.errors import NotFound
from creditapp.ledger.models import Hold, LedgerEntry
from creditapp.metering.usage import Usage
from creditapp.pricing import book
from creditapp.pricing.models import Price


@dataclass(frozen=True)
class Receipt:
    """The explanation of one charged call. `charged` can be below `cost` only by
    `uncollected` (the account could not cover a cost above its hold, or a late settle)."""

    usage: UsageRecord
    price: Price
    tier_above_input_tokens: int  # the prompt-size tier of the price row that applied (0: base)
    lines: list[book.CostLine]
    exact_micro_credits: Decimal
    cost: int  # the exact cost rounded up once
    charged: int
    hold: Hold

    @property
    def released(self) -> int:
        """What the hold gave back when it was settled."""
        return self.hold.amount - min(self.charged, self.hold.amount)


@dataclass(frozen=True)
class Transaction:
    entry: LedgerEntry
    receipt: Receipt | None  # for a charge of a provider call; None for every other entry


def transaction(
    session: DbSession, *, account_id: int, entry_id: int, user_id: int | None = None
) -> Transaction:
    """One ledger entry of the account (one `user_id` caused, when given: a team member's own),
    with the receipt of the call it charged."""
    entry = session.get(LedgerEntry, entry_id)
    if entry is None or entry.account_id != account_id:
        raise NotFound("No such transaction.")
    if user_id is not None and entry.user_id != user_id:
        raise NotFound("No such transaction.")
    if entry.type != "charge" or entry.hold_id is None:
        return Transaction(entry, None)
    return Transaction(entry, of_call(session, hold_id=entry.hold_id))


def of_call(session: DbSession, *, hold_id: int, user_id: int | None = None) -> Receipt | None:
    """The receipt of the call its hold paid for (made by `user_id`, when given), or None when
    no call was charged on that hold."""
    query = (
        select(UsageRecord, Price, Hold)
        .join(Price, Price.id == UsageRecord.price_id)
        .join(Hold, Hold.id == UsageRecord.hold_id)
        .where(UsageRecord.hold_id == hold_id)
    )
    if user_id is not None:
        query = query.where(UsageRecord.user_id == user_id)
    found = session.execute(query).one_or_none()
    if found is None:
        return None
    record, price, hold = found
    usage = Usage(
        input_tokens=record.input_tokens,
        cached_tokens=record.cached_tokens,
        cache_write_tokens=record.cache_write_tokens,
        output_tokens=record.output_tokens,
        reasoning_tokens=record.reasoning_tokens,
        estimated=record.estimated,
    )
    tier, rates = book.tier_for(price, usage.input_tokens)
    exact = rates.exact_micro_credits(usage)
    return Receipt(
        usage=record,
        price=price,
        tier_above_input_tokens=tier,
        lines=rates.lines(usage),
        exact_micro_credits=exact,
        cost=book.round_up(exact),
        charged=record.credits_charged,
        hold=hold,
    )
