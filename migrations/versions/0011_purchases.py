"""Purchases: credits bought through Stripe Checkout, and every Stripe event received (recorded
once, in the transaction of its effect); reconciliation reports list purchases' shortfalls.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
STATUSES = "'pending', 'paid', 'failed', 'refunded', 'partially_refunded', 'disputed'"


def upgrade() -> None:
    op.create_table(
        "purchases",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=True),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("problem", sa.String(32), nullable=True),
        sa.Column("checkout_session_id", sa.String(255), nullable=True),
        sa.Column("checkout_url", sa.String(2048), nullable=True),
        sa.Column("payment_intent", sa.String(255), nullable=True),
        sa.Column("grant_id", ID, sa.ForeignKey("grants.id"), nullable=True),
        sa.Column("refunded_cents", sa.BigInteger(), nullable=False),
        sa.Column("clawed_back", sa.BigInteger(), nullable=False),
        sa.Column("shortfall", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("paid_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="status_known"),
        sa.CheckConstraint("credits > 0 AND amount_cents > 0", name="amounts_positive"),
        sa.CheckConstraint(
            "refunded_cents >= 0 AND clawed_back >= 0 AND shortfall >= 0",
            name="claw_back_not_negative",
        ),
        sa.CheckConstraint("clawed_back + shortfall <= credits", name="claw_back_within_credits"),
        sa.UniqueConstraint("grant_id"),
    )
    op.create_index(
        "uq_purchases_checkout_session_id", "purchases", ["checkout_session_id"], unique=True
    )
    op.create_index("ix_purchases_payment_intent", "purchases", ["payment_intent"])
    op.create_index("ix_purchases_account_id", "purchases", ["account_id", "id"])
    op.create_index(
        "ix_purchases_pending",
        "purchases",
        ["created_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("purchase_id", ID, sa.ForeignKey("purchases.id"), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
    )
    op.add_column(
        "reconciliation_reports",
        sa.Column("shortfalls", sa.JSON(), nullable=False, server_default="[]"),
    )


def downgrade() -> None:
    with op.batch_alter_table("reconciliation_reports") as reports:
        reports.drop_column("shortfalls")
    op.drop_table("stripe_events")
    op.drop_index("ix_purchases_pending", table_name="purchases")
    op.drop_index("ix_purchases_account_id", table_name="purchases")
    op.drop_index("ix_purchases_payment_intent", table_name="purchases")
    op.drop_index("uq_purchases_checkout_session_id", table_name="purchases")
    op.drop_table("purchases")
