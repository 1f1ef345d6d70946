"""Tables of purchases: credits bought through Stripe Checkout, and the Stripe events received."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

PURCHASE_STATUSES = ("pending", "paid", "failed", "refunded", "partially_refunded", "disputed")


class Purchase(db.Model):  # type: ignore[name-defined,misc]
    """Credits bought for an account. `grant_id` is set once, when the credits are granted: a
    purchase is granted exactly once, whatever events arrive. What a refund or a dispute took
    back is `clawed_back`; what the account no longer had to take back is `shortfall`."""

    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    team_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("teams.id"), nullable=True)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)  # µcr
    amount_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    problem: Mapped[str | None] = mapped_column(String(32), nullable=True)
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), nullable=True)
    grant_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("grants.id"), nullable=True, unique=True
    )
    refunded_cents: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    clawed_back: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    shortfall: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the sync-purchases job last had Stripe's answer about it (None: never asked): a
    # pending purchase is one whose state is known as of then, however old it is.
    looked_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(one_of("status", PURCHASE_STATUSES), name="status_known"),
        CheckConstraint("credits > 0 AND amount_cents > 0", name="amounts_positive"),
        CheckConstraint(
            "refunded_cents >= 0 AND clawed_back >= 0 AND shortfall >= 0",
            name="claw_back_not_negative",
        ),
        CheckConstraint("clawed_back + shortfall <= credits", name="claw_back_within_credits"),
        Index("uq_purchases_checkout_session_id", "checkout_session_id", unique=True),
        Index("ix_purchases_payment_intent", "payment_intent"),
        Index("ix_purchases_account_id", "account_id", "id"),
        # The sync job's search: pending purchases, oldest first.
        Index(
            "ix_purchases_pending",
            "created_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class StripeEvent(db.Model):  # type: ignore[name-defined,misc]
    """Each Stripe event id, recorded once, in the transaction of its effect: a duplicate
    delivery finds it and does nothing."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100), nullable=False)
    purchase_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("purchases.id"), nullable=True
    )
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class StripePaymentIntent(db.Model):  # type: ignore[name-defined,misc]
    """What Stripe's charge events have said of a payment intent: the refunded amount (the
    largest `amount_refunded` seen: it is cumulative), whether it was disputed, and whether the
    dispute closed in the merchant's favour (won, or an inquiry closed with a warning: the money
    stays, and so do the credits). Both flags only ever become true. Kept whatever
    order events come in, so that a refund or a dispute that arrives before its purchase is
    linked to the intent (by its Checkout Session's event, or the sync job) is applied when it
    is. Written by an upsert on both sides, whose row lock makes the second see the first."""

    __tablename__ = "stripe_payment_intents"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    refunded_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)
    disputed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    dispute_won: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )

    __table_args__ = (CheckConstraint("refunded_cents >= 0", name="refunded_not_negative"),)
