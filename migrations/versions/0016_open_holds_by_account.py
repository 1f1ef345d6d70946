"""An account's open holds by account (`ix_holds_unresolved_account`): read when the account has
expired credits that holds placed before the expiry may claim.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_holds_unresolved_account",
        "holds",
        ["account_id"],
        postgresql_where=sa.text("resolved_at IS NULL"),
        sqlite_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_holds_unresolved_account", table_name="holds")
