"""Adjust entries by their reference (`ix_ledger_entries_adjust_reference`): a won dispute
reads what its purchase's claw-backs took, in the Stripe webhook's request, where a walk
through the account's whole ledger (a busy account's millions of entries) would run past the
statement timeout on every retry. Adjust entries are few: holds and settles write none.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_ledger_entries_adjust_reference",
        "ledger_entries",
        ["account_id", "reference"],
        postgresql_where=sa.text("type = 'adjust'"),
        sqlite_where=sa.text("type = 'adjust'"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_adjust_reference", table_name="ledger_entries")
