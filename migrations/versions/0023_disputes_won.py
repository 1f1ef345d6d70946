"""A dispute that closes in the merchant's favour (`charge.dispute.closed`, won or an inquiry
closed with a warning) gives back the credits it took: `stripe_payment_intents.dispute_won`
keeps that a payment intent's dispute was won, whichever of its events came first.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "stripe_payment_intents",
        sa.Column("dispute_won", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("stripe_payment_intents") as batch:
        batch.drop_column("dispute_won")
