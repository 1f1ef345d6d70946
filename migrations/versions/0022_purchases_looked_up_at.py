"""When the sync-purchases job last had Stripe's answer about a pending purchase
(`purchases.looked_up_at`): the pending-purchase alert measures how long a purchase has gone
without word from Stripe, not its age (an abandoned checkout stays pending, and known to be
open, until Stripe expires its session a day later).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("purchases", sa.Column("looked_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("looked_up_at")
