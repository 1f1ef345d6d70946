"""Tables of billing: one row per metered provider call (charged, or unbilled when its settle
failed), the daily roll-ups of the charged ones, and compensations (refunds owed for a charge).

Billing knows accounts, holds and prices, never what a call was for: a caller (a conversation,
the gateway) links its own rows to a usage record, or names itself in `conversation_id`."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db
from creditapp.metering.usage import TOKEN_COUNTERS

COMPENSATION_STATUSES = ("pending", "processing", "completed", "failed")
# How a provider call ended: its reply whole, the client gone mid-stream, the provider failing
# mid-stream, the stream's deadline passed (all but the first are charged for what was
# delivered).
CALL_ENDINGS = ("completed", "client_closed", "provider_failed", "timed_out")
# What a roll-up sums of its usage records: how many, their token counts, the credits charged.
ROLLUP_SUMS = ("requests", *TOKEN_COUNTERS, "credits")
# What a team's report groups roll-ups by besides their day (the member, the model).
ROLLUP_KEY_PARTS = ("user_id", "provider", "model")


class TokenCounts:
    """The token counts of a call, or sums of them (one column per `TOKEN_COUNTERS`)."""

    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ProviderCall(TokenCounts):
    """The columns of one provider call: who made it, which account paid under which hold, the
    price row that priced it, its normalized usage and its exact cost."""

    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    # The conversation the call was made for; none for a call through the gateway.
    conversation_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("conversations.id"), nullable=True
    )
    hold_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("holds.id"), unique=True, nullable=False
    )
    price_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prices.id"), nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    estimated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    ending: Mapped[str] = mapped_column(
        String(16), nullable=False, default="completed", server_default="completed"
    )
    cost: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class UsageRecord(ProviderCall, db.Model):  # type: ignore[name-defined,misc]
    """One provider call: its normalized usage, the price row that priced it and the charge."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    # What the account paid of the exact cost: less only when the account could not cover it
    # (a cost above the hold, or a settle after the hold expired).
    credits_charged: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Counted in usage_rollups (by the roll-up job, in the transaction that set this).
    rolled_up: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )

    __table_args__ = (
        CheckConstraint(
            "input_tokens >= cached_tokens + cache_write_tokens AND cached_tokens >= 0"
            " AND cache_write_tokens >= 0 AND output_tokens >= reasoning_tokens"
            " AND reasoning_tokens >= 0",
            name="token_counts_consistent",
        ),
        CheckConstraint("credits_charged >= 0 AND credits_charged <= cost", name="charge_bounded"),
        CheckConstraint(one_of("ending", CALL_ENDINGS), name="ending_known"),
        Index("ix_usage_records_user_created", "user_id", "created_at"),
        # The usage report of a team's account (its members' calls).
        Index("ix_usage_records_account_created", "account_id", "created_at"),
        # What the usage report reads raw, and what the roll-up job has still to do.
        Index(
            "ix_usage_records_not_rolled_up",
            "user_id",
            "created_at",
            postgresql_where=text("NOT rolled_up"),
            sqlite_where=text("NOT rolled_up"),
        ),
        # ... and for a team's report, all its members' calls.
        Index(
            "ix_usage_records_account_not_rolled_up",
            "account_id",
            "created_at",
            postgresql_where=text("NOT rolled_up"),
            sqlite_where=text("NOT rolled_up"),
        ),
        Index(
            "ix_usage_records_to_roll_up",
            "id",
            postgresql_where=text("NOT rolled_up"),
            sqlite_where=text("NOT rolled_up"),
        ),
    )


class UnbilledUsage(ProviderCall, db.Model):  # type: ignore[name-defined,misc]
    """A provider call that answered but whose settle failed: its hold was voided (the user paid
    nothing), and its usage and cost are kept here for admins and reconciliation, so that no
    call the provider billed goes unrecorded."""

    __tablename__ = "unbilled_usage"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    # Why the settle failed (the exception's type and message, cut to fit).
    error: Mapped[str] = mapped_column(String(500), nullable=False)

    __table_args__ = (
        CheckConstraint("cost >= 0", name="cost_not_negative"),
        CheckConstraint(one_of("ending", CALL_ENDINGS), name="ending_known"),
        Index("ix_unbilled_usage_created_at", "created_at"),
    )


class Compensation(db.Model):  # type: ignore[name-defined,misc]
    """A refund owed for a call's charge: at most one per usage record, paid exactly once."""

    __tablename__ = "compensations"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    usage_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("usage_records.id"), unique=True, nullable=False
    )
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reason: Mapped[str] = mapped_column(String(500), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    requested_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(one_of("status", COMPENSATION_STATUSES), name="status_known"),
        CheckConstraint(
            "(status = 'completed') = (completed_at IS NOT NULL)", name="completed_has_time"
        ),
        Index("ix_compensations_status_next", "status", "next_attempt_at"),
    )


class UsageRollup(TokenCounts, db.Model):  # type: ignore[name-defined,misc]
    """The sums of one user's usage records of one UTC day, provider and model, paid from one
    account (their personal one, or a team's)."""

    __tablename__ = "usage_rollups"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    account_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    day: Mapped[date] = mapped_column(Date, nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        # Unique per key (the roll-up's upserts arbitrate on it), and covering on PostgreSQL:
        # a user's year is read from the index alone, not from rows spread over the table.
        Index(
            "uq_usage_rollups_key",
            "user_id",
            "account_id",
            "day",
            "provider",
            "model",
            unique=True,
            postgresql_include=list(ROLLUP_SUMS),
        ),
        # A team's report of all its members: its year from the index alone too.
        Index(
            "ix_usage_rollups_account_day",
            "account_id",
            "day",
            postgresql_include=[*ROLLUP_KEY_PARTS, *ROLLUP_SUMS],
        ),
    )
