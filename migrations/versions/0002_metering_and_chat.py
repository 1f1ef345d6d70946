"""Metering and chat: the price book, characters, conversations, messages, usage, compensations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True)


def upgrade() -> None:
    op.create_table(
        "prices",
        _id(),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("effective_from", TIMESTAMP, nullable=False),
        # Millionths of a USD per 1M tokens: exact on both databases.
        sa.Column("input", sa.BigInteger(), nullable=False),
        sa.Column("cached_input", sa.BigInteger(), nullable=True),
        sa.Column("cache_write", sa.BigInteger(), nullable=True),
        sa.Column("output", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tiers", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("provider", "model", "effective_from", name="uq_prices_model_time"),
        sa.CheckConstraint(
            "input >= 0 AND output >= 0 AND (cached_input IS NULL OR cached_input >= 0)"
            " AND (cache_write IS NULL OR cache_write >= 0)",
            name="prices_not_negative",
        ),
    )

    op.create_table(
        "characters",
        _id(),
        sa.Column("owner_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_characters_owner_id", "characters", ["owner_id"])

    op.create_table(
        "conversations",
        _id(),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("character_id", ID, sa.ForeignKey("characters.id"), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_conversations_user_id", "conversations", ["user_id"])

    op.create_table(
        "usage_records",
        _id(),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("hold_id", ID, sa.ForeignKey("holds.id"), nullable=False),
        sa.Column("price_id", ID, sa.ForeignKey("prices.id"), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("credits_charged", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("hold_id", name="uq_usage_records_hold_id"),
        sa.CheckConstraint(
            "input_tokens >= cached_tokens + cache_write_tokens AND cached_tokens >= 0"
            " AND cache_write_tokens >= 0 AND output_tokens >= reasoning_tokens"
            " AND reasoning_tokens >= 0",
            name="token_counts_consistent",
        ),
        sa.CheckConstraint(
            "credits_charged >= 0 AND credits_charged <= cost", name="charge_bounded"
        ),
    )
    op.create_index("ix_usage_records_user_created", "usage_records", ["user_id", "created_at"])

    op.create_table(
        "messages",
        _id(),
        sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("usage_id", ID, sa.ForeignKey("usage_records.id"), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="role_known"),
    )
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id", "id"])

    op.create_table(
        "compensations",
        _id(),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("usage_id", ID, sa.ForeignKey("usage_records.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("usage_id", name="uq_compensations_usage_id"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed')", name="status_known"
        ),
        sa.CheckConstraint(
            "(status = 'completed') = (completed_at IS NOT NULL)", name="completed_has_time"
        ),
    )
    op.create_index("ix_compensations_status_next", "compensations", ["status", "next_attempt_at"])


def downgrade() -> None:
    for table in ("compensations", "messages", "usage_records", "conversations", "characters"):
        op.drop_table(table)
    op.drop_table("prices")
