"""Lists a user pages through, newest first, read by an index in their order: the characters a
user sees (their own, `ix_characters_owner_id` now with the id, and the public ones,
`ix_characters_public`: every list read the whole table), a user's conversations and an
account's grants (their indexes now with the id: each page read all of them and sorted).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# (index, table, columns before, columns now)
_WITH_ID = [
    ("ix_characters_owner_id", "characters", ["owner_id"], ["owner_id", "id"]),
    ("ix_conversations_user_id", "conversations", ["user_id"], ["user_id", "id"]),
    ("ix_grants_account_id", "grants", ["account_id"], ["account_id", "id"]),
]


def upgrade() -> None:
    for name, table, _before, now in _WITH_ID:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, now)
    op.create_index(
        "ix_characters_public",
        "characters",
        ["id"],
        postgresql_where=sa.text("public"),
        sqlite_where=sa.text("public"),
    )


def downgrade() -> None:
    op.drop_index("ix_characters_public", table_name="characters")
    for name, table, before, _now in _WITH_ID:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, before)
