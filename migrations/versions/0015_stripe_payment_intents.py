"""What Stripe's charge events said of each payment intent (`stripe_payment_intents`), kept until
the purchase of the intent is known: a refund or a dispute that arrives before the payment's
own event is applied when it comes. Charge events of unknown intents received before this
revision were recorded without their amounts.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_payment_intents",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("refunded_cents", sa.BigInteger(), nullable=False),
        sa.Column("disputed", sa.Boolean(), nullable=False),
        sa.CheckConstraint("refunded_cents >= 0", name="refunded_not_negative"),
    )


def downgrade() -> None:
    op.drop_table("stripe_payment_intents")
