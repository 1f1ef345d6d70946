"""Tables of signals out: alert thresholds, webhook endpoints, the outbox of events, deliveries.

An event is written in the transaction of the change that caused it, with one delivery per
endpoint of its account that listens to its type: a rolled-back change leaves neither, a
committed one cannot lose them. Deliveries are claimed by the delivery job (`SKIP LOCKED`), so
two workers never send one at once; a delivery keeps its event's `webhook-id` on every attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

EVENT_TYPES = (
    "balance.low",
    "balance.depleted",
    "grant.expiring",
    "purchase.completed",
    "purchase.refunded",
    "key.limit_reached",
    "team.member_cap_reached",
)
# Sent to one endpoint on request (the dashboard's "send a test event"), never subscribed to.
TEST_EVENT_TYPE = "webhook.test"
DELIVERY_STATUSES = ("pending", "delivered", "failed")


class BalanceAlert(db.Model):  # type: ignore[name-defined,misc]
    """A low-balance threshold of an account (µcr). `armed` until available credits fall
    strictly below it (one `balance.low` event), armed again once they are strictly above it."""

    __tablename__ = "balance_alerts"

    account_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("accounts.id"), primary_key=True, autoincrement=False
    )
    threshold: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    armed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (CheckConstraint("threshold > 0", name="threshold_positive"),)


class WebhookEndpoint(db.Model):  # type: ignore[name-defined,misc]
    """Where an account's events of the listed types are posted, signed with `secret`
    (`whsec_` + base64: shown once when created; kept because signing needs it)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    created_by: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    # The event types, comma-separated (matched in SQL when an event fans out).
    events: Mapped[str] = mapped_column(String(500), nullable=False)
    secret: Mapped[str] = mapped_column(String(100), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # Why it was disabled by the service (`gone`: it answered 410), NULL if by its owner.
    disabled_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Deleted endpoints are kept (their deliveries name them) but no longer listed or sent to.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_webhook_endpoints_account_id", "account_id"),)


class WebhookEvent(db.Model):  # type: ignore[name-defined,misc]
    """One event of the outbox: `{type, timestamp, data}` is the body every endpoint receives,
    under the `webhook-id` `evt_<id>`."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    type: Mapped[str] = mapped_column(String(40), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("type", (*EVENT_TYPES, TEST_EVENT_TYPE)), name="type_known"),
        Index("ix_webhook_events_created_at", "created_at"),
        # Ids outlive the purge (SQLite would give the largest left + 1): `evt_<id>` is a
        # `webhook-id`, which receivers deduplicate on. PostgreSQL's sequence never repeats.
        {"sqlite_autoincrement": True},
    )


class WebhookDelivery(db.Model):  # type: ignore[name-defined,misc]
    """One event to one endpoint: `pending` until a 2xx (`delivered`) or its last attempt
    (`failed`); `next_attempt_at` is when the delivery job may post it again, `claimed_until`
    the end of the lease of a run posting it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    event_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A delivery run posting it now holds it until then (its lease): no other run claims it,
    # and only that run records the attempt. A manual retry leaves a lease alone.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The HTTP status of the last attempt, or NULL with `last_error` when none came back.
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("status", DELIVERY_STATUSES), name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        CheckConstraint(
            "(status = 'pending') = (next_attempt_at IS NOT NULL)", name="pending_iff_due"
        ),
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        # The delivery job's search: pending deliveries, soonest due first.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # An endpoint's pending deliveries: whether one is under way (a claim posts one an
        # endpoint at a time; the overdue gauge leaves out those waiting for their endpoint).
        Index(
            "ix_webhook_deliveries_pending_endpoint",
            "endpoint_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        {"sqlite_autoincrement": True},  # a delivery's id is the API's: never given twice
    )
