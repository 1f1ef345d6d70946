"""Money hardening: entry times that never go backwards, the expire-grants and idempotency purge
jobs' indexes, usage kept when a settle fails, and its totals in reconciliation reports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("accounts", sa.Column("last_entry_at", TIMESTAMP, nullable=True))
    op.execute(
        "UPDATE accounts SET last_entry_at ="
        " (SELECT MAX(created_at) FROM ledger_entries WHERE account_id = accounts.id)"
    )
    op.create_index("ix_grants_expires_at", "grants", ["expires_at"])
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    op.create_table(
        "unbilled_usage",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("hold_id", ID, sa.ForeignKey("holds.id"), unique=True, nullable=False),
        sa.Column("price_id", ID, sa.ForeignKey("prices.id"), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.String(500), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("cost >= 0", name="cost_not_negative"),
    )
    op.create_index("ix_unbilled_usage_created_at", "unbilled_usage", ["created_at"])
    for column in ("unbilled_calls", "unbilled_cost"):
        op.add_column(
            "reconciliation_reports",
            sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    for column in ("unbilled_cost", "unbilled_calls"):
        op.drop_column("reconciliation_reports", column)
    op.drop_table("unbilled_usage")
    op.drop_index("ix_idempotency_keys_expires_at", "idempotency_keys")
    op.drop_index("ix_grants_expires_at", "grants")
    op.drop_column("accounts", "last_entry_at")
