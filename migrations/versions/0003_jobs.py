"""Jobs: usage roll-ups (and which records they count), reconciliation reports.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "usage_records",
        sa.Column("rolled_up", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_usage_records_not_rolled_up",
        "usage_records",
        ["user_id", "created_at"],
        postgresql_where=sa.text("NOT rolled_up"),
        sqlite_where=sa.text("NOT rolled_up"),
    )
    op.create_index(
        "ix_usage_records_to_roll_up",
        "usage_records",
        ["id"],
        postgresql_where=sa.text("NOT rolled_up"),
        sqlite_where=sa.text("NOT rolled_up"),
    )
    op.create_table(
        "usage_rollups",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
    )
    # Covering on PostgreSQL: a user's year is read from the index alone.
    op.create_index(
        "uq_usage_rollups_key",
        "usage_rollups",
        ["user_id", "day", "provider", "model"],
        unique=True,
        postgresql_include=[
            "requests",
            "input_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "credits",
        ],
    )
    op.create_table(
        "reconciliation_reports",
        sa.Column("id", ID, primary_key=True),
        sa.Column("ran_at", TIMESTAMP, nullable=False),
        sa.Column("checked_accounts", sa.Integer(), nullable=False),
        sa.Column("drift", sa.JSON(), nullable=False),
    )
    op.create_index("ix_reconciliation_reports_ran_at", "reconciliation_reports", ["ran_at"])


def downgrade() -> None:
    op.drop_table("reconciliation_reports")
    op.drop_table("usage_rollups")
    op.drop_index("ix_usage_records_to_roll_up", "usage_records")
    op.drop_index("ix_usage_records_not_rolled_up", "usage_records")
    op.drop_column("usage_records", "rolled_up")
