"""API keys for the OpenAI-compatible gateway, and the spending caps they are held to.

A key's `limit` per period is a spending cap (`spend_caps`), enforced in the hold's own
transaction like the balance; a hold names the caps it counts against (`hold_caps`, and
`holds.capped` so that resolving a hold of no cap costs no statement more).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "spend_caps",
        sa.Column("id", ID, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ceiling", sa.BigInteger(), nullable=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_start", TIMESTAMP, nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('key')", name="kind_known"),
        sa.CheckConstraint("period IN ('day', 'week', 'month', 'total')", name="period_known"),
        sa.CheckConstraint("ceiling IS NULL OR ceiling > 0", name="ceiling_positive"),
        sa.CheckConstraint("spent >= 0 AND reserved >= 0", name="counts_not_negative"),
    )
    op.create_table(
        "hold_caps",
        sa.Column("hold_id", ID, sa.ForeignKey("holds.id"), primary_key=True),
        sa.Column("cap_id", ID, sa.ForeignKey("spend_caps.id"), primary_key=True),
    )
    op.create_index("ix_hold_caps_cap_id", "hold_caps", ["cap_id"])
    op.add_column(
        "holds",
        sa.Column("capped", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=True),
        sa.Column("cap_id", ID, sa.ForeignKey("spend_caps.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("cap_id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("holds") as holds:
        holds.drop_column("capped")
    op.drop_index("ix_hold_caps_cap_id", table_name="hold_caps")
    op.drop_table("hold_caps")
    op.drop_table("spend_caps")
