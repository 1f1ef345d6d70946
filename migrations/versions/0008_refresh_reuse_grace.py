"""Refresh reuse grace: the refresh token a session's last rotation replaced, and when.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_sessions") as auth_sessions:
        auth_sessions.add_column(sa.Column("previous_refresh_jti", sa.String(64), nullable=True))
        auth_sessions.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_sessions") as auth_sessions:
        auth_sessions.drop_column("rotated_at")
        auth_sessions.drop_column("previous_refresh_jti")
