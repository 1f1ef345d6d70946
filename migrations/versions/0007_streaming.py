"""Streaming: how each provider call ended, and replies cut short kept as partial.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CALL_ENDINGS = ("completed", "client_closed", "provider_failed")


def upgrade() -> None:
    for table in ("usage_records", "unbilled_usage"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("ending", sa.String(16), nullable=False, server_default="completed")
            )
            batch.create_check_constraint(
                "ending_known", "ending IN (" + ", ".join(f"'{e}'" for e in CALL_ENDINGS) + ")"
            )
    op.add_column(
        "messages", sa.Column("partial", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("messages", "partial")
    for table in ("usage_records", "unbilled_usage"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint("ending_known", type_="check")
            batch.drop_column("ending")
