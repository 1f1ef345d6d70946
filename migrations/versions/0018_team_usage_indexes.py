"""A team's usage report from the roll-ups, as a user's is: the roll-ups of an account by day
(`ix_usage_rollups_account_day`, covering on PostgreSQL) and an account's records not rolled up
yet (`ix_usage_records_account_not_rolled_up`). The report summed every record of the range.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# As in creditapp.billing.models when this revision was written.
_INCLUDED = [
    "user_id",
    "provider",
    "model",
    "requests",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "credits",
]


def upgrade() -> None:
    op.create_index(
        "ix_usage_rollups_account_day",
        "usage_rollups",
        ["account_id", "day"],
        postgresql_include=_INCLUDED,
    )
    op.create_index(
        "ix_usage_records_account_not_rolled_up",
        "usage_records",
        ["account_id", "created_at"],
        postgresql_where=sa.text("NOT rolled_up"),
        sqlite_where=sa.text("NOT rolled_up"),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_records_account_not_rolled_up", table_name="usage_records")
    op.drop_index("ix_usage_rollups_account_day", table_name="usage_rollups")
