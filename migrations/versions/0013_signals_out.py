"""Signals out: low-balance thresholds, webhook endpoints, the outbox of events and deliveries.

- `balance_alerts`: an account's thresholds, each armed or not (fired and not yet re-armed).
- `webhook_endpoints`, `webhook_events` (the outbox, written in the transaction of the change
  that caused each event) and `webhook_deliveries` (one per event and endpoint).
- `accounts.watched`: the account has thresholds or endpoints, so its ledger operations look for
  thresholds crossed; `grants.expiry_signalled`: `grant.expiring` was sent for it;
  `spend_caps.reached_signalled_for`: the period whose refusal was signalled.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
EVENT_TYPES = ", ".join(
    repr(event_type)
    for event_type in (
        "balance.low",
        "balance.depleted",
        "grant.expiring",
        "purchase.completed",
        "purchase.refunded",
        "key.limit_reached",
        "team.member_cap_reached",
        "webhook.test",
    )
)


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("watched", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.add_column(
        "grants",
        sa.Column(
            "expiry_signalled", sa.Boolean(), nullable=False, server_default=sa.text("false")
        ),
    )
    op.add_column("spend_caps", sa.Column("reached_signalled_for", TIMESTAMP, nullable=True))
    op.create_table(
        "balance_alerts",
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("threshold", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("threshold > 0", name="threshold_positive"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_by", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.String(500), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(32), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("deleted_at", TIMESTAMP, nullable=True),
    )
    op.create_index("ix_webhook_endpoints_account_id", "webhook_endpoints", ["account_id"])
    op.create_table(
        "webhook_events",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(f"type IN ({EVENT_TYPES})", name="type_known"),
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "event_id",
            ID,
            sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "endpoint_id",
            ID,
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("claimed_until", TIMESTAMP, nullable=True),
        sa.Column("last_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status_known"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        sa.CheckConstraint(
            "(status = 'pending') = (next_attempt_at IS NOT NULL)", name="pending_iff_due"
        ),
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id", "webhook_deliveries", ["endpoint_id", "id"]
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
    op.drop_table("balance_alerts")
    with op.batch_alter_table("spend_caps") as caps:
        caps.drop_column("reached_signalled_for")
    with op.batch_alter_table("grants") as grants:
        grants.drop_column("expiry_signalled")
    with op.batch_alter_table("accounts") as accounts:
        accounts.drop_column("watched")
