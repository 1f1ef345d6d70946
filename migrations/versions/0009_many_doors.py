"""Many doors: an account is owned by a user or by a team, a metered call need not belong to a
conversation (a call through the gateway has none), and an Idempotency-Key belongs to the scope of
whoever sent it (`user:<id>` for a signed-in user, as every existing key becomes; an API key's own
scope next).

Every existing account keeps its id, owner and chain of ledger entries; only the owner columns
change (user_id may be NULL when team_id names the owner, exactly one of them is set).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "team_members",
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), primary_key=True),
        sa.Column("user_id", ID, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="role_known"),
    )
    op.create_index("ix_team_members_user_id", "team_members", ["user_id"])
    with op.batch_alter_table("accounts") as accounts:
        accounts.alter_column("user_id", existing_type=ID, nullable=True)
        accounts.add_column(sa.Column("team_id", ID, nullable=True))
        accounts.create_foreign_key("fk_accounts_team_id_teams", "teams", ["team_id"], ["id"])
        accounts.create_unique_constraint("uq_accounts_team_id", ["team_id"])
        accounts.create_check_constraint("one_owner", "(user_id IS NULL) <> (team_id IS NULL)")
    for table in ("usage_records", "unbilled_usage"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("conversation_id", existing_type=ID, nullable=True)
    op.add_column("idempotency_keys", sa.Column("scope", sa.String(80), nullable=True))
    op.execute("UPDATE idempotency_keys SET scope = 'user:' || user_id")
    with op.batch_alter_table("idempotency_keys") as keys:
        keys.alter_column("scope", existing_type=sa.String(80), nullable=False)
        keys.drop_constraint("uq_idempotency_keys_user_key", type_="unique")
        keys.create_unique_constraint("uq_idempotency_keys_scope_key", ["scope", "key"])
        keys.drop_column("user_id")


# Rows 0008's schema cannot hold: an account is a user's there, and every metered call a
# conversation's.
NOT_IN_0008 = {
    "accounts owned by a team (no user_id)": ("accounts", "team_id IS NOT NULL"),
    "usage records without a conversation": ("usage_records", "conversation_id IS NULL"),
    "unbilled calls without a conversation": ("unbilled_usage", "conversation_id IS NULL"),
}
SHOWN_IDS = 10


def refuse_rows_0008_cannot_hold() -> None:
    """Refuse the downgrade, before it changes anything, while rows exist that 0008 cannot hold
    (its NOT NULL user_id and conversation_id would fail half way); the error names them. They
    are the teams' and the gateway's: delete or reassign them first, or stay at 0009."""
    if op.get_context().as_sql:
        return  # an offline script: nothing to count
    bind = op.get_bind()
    found = []
    for what, (table, condition) in NOT_IN_0008.items():
        count = bind.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {condition}")).scalar()
        if count:
            ids = bind.execute(
                sa.text(f"SELECT id FROM {table} WHERE {condition} ORDER BY id LIMIT {SHOWN_IDS}")
            ).scalars()
            more = ", ..." if count > SHOWN_IDS else ""
            found.append(f"{what}: {count} ({table}.id {', '.join(map(str, ids))}{more})")
    if found:
        raise RuntimeError(
            "Downgrade below 0009 refused, nothing was changed: "
            + "; ".join(found)
            + ". The schema of 0008 has no place for them (accounts.user_id and"
            " conversation_id are NOT NULL there): delete or reassign them first, or stay at 0009."
        )


def downgrade() -> None:
    refuse_rows_0008_cannot_hold()
    # Keys of other scopes than a user's cannot go back to a user id: they are dropped (a key
    # only ever protects a retry, and these are the callers the old schema cannot name).
    op.execute("DELETE FROM idempotency_keys WHERE scope NOT LIKE 'user:%'")
    op.add_column("idempotency_keys", sa.Column("user_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE idempotency_keys SET user_id = CAST(SUBSTR(scope, 6) AS BIGINT)")
    with op.batch_alter_table("idempotency_keys") as keys:
        keys.alter_column("user_id", existing_type=sa.BigInteger(), nullable=False)
        keys.drop_constraint("uq_idempotency_keys_scope_key", type_="unique")
        keys.create_unique_constraint("uq_idempotency_keys_user_key", ["user_id", "key"])
        keys.drop_column("scope")
    for table in ("usage_records", "unbilled_usage"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("conversation_id", existing_type=ID, nullable=False)
    with op.batch_alter_table("accounts") as accounts:
        accounts.drop_constraint("one_owner", type_="check")
        accounts.drop_constraint("uq_accounts_team_id", type_="unique")
        accounts.drop_constraint("fk_accounts_team_id_teams", type_="foreignkey")
        accounts.drop_column("team_id")
        accounts.alter_column("user_id", existing_type=ID, nullable=False)
    op.drop_index("ix_team_members_user_id", table_name="team_members")
    op.drop_table("team_members")
    op.drop_table("teams")
