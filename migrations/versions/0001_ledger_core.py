"""Ledger core: users, tiers, accounts, grants, holds, ledger entries, audit, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
MICRO = 1_000_000


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    tiers = op.create_table(
        "tiers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("monthly_credits", sa.BigInteger(), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=False),
        sa.Column("default_max_tokens", sa.Integer(), nullable=False),
        sa.Column("max_max_tokens", sa.Integer(), nullable=False),
        sa.Column("rate_limits", sa.JSON(), nullable=True),
        sa.CheckConstraint("monthly_credits >= 0", name="monthly_credits_not_negative"),
        sa.CheckConstraint(
            "default_max_tokens > 0 AND max_max_tokens >= default_max_tokens",
            name="max_tokens_ordered",
        ),
    )
    op.bulk_insert(
        tiers,
        [
            {
                "name": "free",
                "monthly_credits": 100 * MICRO,
                "allowed_models": ["*"],
                "default_max_tokens": 1024,
                "max_max_tokens": 4096,
                "rate_limits": None,
            },
            {
                "name": "pro",
                "monthly_credits": 5_000 * MICRO,
                "allowed_models": ["*"],
                "default_max_tokens": 2048,
                "max_max_tokens": 16384,
                "rate_limits": None,
            },
        ],
    )

    op.create_table(
        "users",
        _id(),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("tier_name", sa.String(64), sa.ForeignKey("tiers.name"), nullable=False),
        sa.Column("period_anchor", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("email", name="uq_users_email"),
        sa.CheckConstraint("role IN ('user', 'admin')", name="role_known"),
        sa.CheckConstraint("email = lower(email)", name="email_lowercase"),
    )

    # The account's balance must be its newest entry's balance_after. SQLite accepts the
    # forward reference at CREATE time; PostgreSQL gets the key once ledger_entries exists.
    balance_is_last_entry = dict(
        columns=["id", "last_seq", "balance"],
        refcolumns=[
            "ledger_entries.account_id",
            "ledger_entries.seq",
            "ledger_entries.balance_after",
        ],
        name="fk_accounts_balance_is_last_entry",
        deferrable=True,
        initially="DEFERRED",
    )
    op.create_table(
        "accounts",
        _id(),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("user_id", name="uq_accounts_user_id"),
        sa.CheckConstraint("balance >= 0", name="balance_not_negative"),
        sa.CheckConstraint("reserved >= 0 AND reserved <= balance", name="reserved_within_balance"),
        sa.CheckConstraint("last_seq IS NOT NULL OR balance = 0", name="balance_has_entries"),
        *([sa.ForeignKeyConstraint(**balance_is_last_entry)] if sqlite else []),
    )

    op.create_table(
        "audit_records",
        _id(),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("balance_before", sa.BigInteger(), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("reserved_before", sa.BigInteger(), nullable=True),
        sa.Column("reserved_after", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "actor_type IN ('user', 'admin', 'job', 'system')",
            name="actor_type_known",
        ),
    )
    op.create_index("ix_audit_records_account_id", "audit_records", ["account_id", "id"])

    op.create_table(
        "grants",
        _id(),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("period", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("account_id", "period", name="uq_grants_account_period"),
        sa.CheckConstraint(
            "source IN ('subscription', 'purchase', 'promo', 'admin')",
            name="source_known",
        ),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount", name="remaining_within_amount"
        ),
        sa.CheckConstraint(
            "(source = 'subscription' AND period IS NOT NULL)"
            " OR (source <> 'subscription' AND period IS NULL)",
            name="period_iff_subscription",
        ),
    )
    # Names no column a draw changes, so PostgreSQL updates `remaining` in place (HOT).
    op.create_index("ix_grants_account_id", "grants", ["account_id"])

    op.create_table(
        "holds",
        _id(),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=True),
        sa.Column("uncollected", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'settled', 'voided', 'expired')",
            name="status_known",
        ),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "(status = 'pending' AND resolved_at IS NULL AND captured IS NULL)"
            " OR (status <> 'pending' AND resolved_at IS NOT NULL AND captured IS NOT NULL)",
            name="resolved_once",
        ),
        sa.CheckConstraint("captured IS NULL OR captured >= 0", name="captured_not_negative"),
        sa.CheckConstraint("uncollected >= 0", name="uncollected_not_negative"),
    )
    # Not `status = 'pending'`: see the Hold model on why the predicate names resolved_at.
    op.create_index(
        "ix_holds_unresolved_expiry",
        "holds",
        ["expires_at"],
        postgresql_where=sa.text("resolved_at IS NULL"),
        sqlite_where=sa.text("resolved_at IS NULL"),
    )

    op.create_table(
        "ledger_entries",
        _id(),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_seq", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_before", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("grant_id", ID, sa.ForeignKey("grants.id"), nullable=False),
        sa.Column("hold_id", ID, sa.ForeignKey("holds.id"), nullable=True),
        sa.Column("audit_id", ID, sa.ForeignKey("audit_records.id"), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("account_id", "seq", name="uq_ledger_entries_account_seq"),
        sa.UniqueConstraint(
            "account_id", "seq", "balance_after", name="uq_ledger_entries_account_seq_balance"
        ),
        sa.ForeignKeyConstraint(
            ["account_id", "prev_seq", "balance_before"],
            ["ledger_entries.account_id", "ledger_entries.seq", "ledger_entries.balance_after"],
            name="fk_ledger_entries_continues_previous",
        ),
        sa.CheckConstraint(
            "type IN ('grant', 'refresh', 'expire', 'charge', 'refund', 'adjust')",
            name="type_known",
        ),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
        sa.CheckConstraint("balance_after = balance_before + amount", name="balance_follows"),
        sa.CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        sa.CheckConstraint(
            "(seq = 1 AND prev_seq IS NULL AND balance_before = 0)"
            " OR (seq > 1 AND prev_seq = seq - 1)",
            name="seq_chain",
        ),
    )
    # No secondary indexes on ledger_entries beyond the chain: every one costs each write, and
    # the readers (per-account pages, reconciliation's full aggregates) do not need them.
    if not sqlite:
        fk = balance_is_last_entry
        op.create_foreign_key(
            fk["name"],
            "accounts",
            "ledger_entries",
            ["id", "last_seq", "balance"],
            ["account_id", "seq", "balance_after"],
            deferrable=True,
            initially="DEFERRED",
        )

    op.create_table(
        "idempotency_keys",
        _id(),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claim_token", sa.String(32), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("response_content_type", sa.String(100), nullable=True),
        sa.Column("claimed_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),
        sa.CheckConstraint("status IN ('in_progress', 'completed')", name="status_known"),
        sa.CheckConstraint(
            "status = 'in_progress' OR response_status IS NOT NULL",
            name="completed_has_response",
        ),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_accounts_balance_is_last_entry", "accounts", type_="foreignkey")
    for table in (
        "idempotency_keys",
        "ledger_entries",
        "holds",
        "grants",
        "audit_records",
        "accounts",
        "users",
        "tiers",
    ):
        op.drop_table(table)
