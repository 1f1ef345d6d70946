"""An index of each endpoint's pending webhook deliveries: the delivery job posts one an
endpoint at a time, so each claim asks whether an endpoint has one under way, and the overdue
gauge leaves out deliveries waiting for their endpoint's post. The endpoint's index of all its
deliveries (`ix_webhook_deliveries_endpoint_id`) covers the whole retention.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_pending_endpoint",
        "webhook_deliveries",
        ["endpoint_id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_pending_endpoint", table_name="webhook_deliveries")
