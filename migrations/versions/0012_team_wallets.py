"""Team wallets: transfers into a team's account, members' spending caps, and who caused an entry.

- Entries `transfer_out` / `transfer_in` and grants of source `transfer` (a member's credits
  moved to the team, keeping their expiry).
- A spending cap names the account its spender spends from (reconciliation checks every cap
  with that account, holds or none), and may be closed (`closed_at`: its key was revoked, its
  member left; the hold's own update then refuses): revoked keys' caps are closed.
- Every member has a spending cap (`team_members.cap_id`, a `spend_caps` row of kind `member`;
  members of teams made before this release get an uncapped one, counted from this month).
- `holds.user_id` and `ledger_entries.user_id`: the user who spends or moved the credits, so
  that every entry of a team's account names its member.
- The team usage report reads a team account's records by time; roll-ups are kept per user and
  paying account (a member's personal report counts what their personal account paid, the
  team's what the team paid), recounted from the records by the next roll-up run.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

ENTRY_TYPES_BEFORE = ("grant", "refresh", "expire", "charge", "refund", "adjust")
ENTRY_TYPES = (*ENTRY_TYPES_BEFORE, "transfer_out", "transfer_in")
GRANT_SOURCES_BEFORE = ("subscription", "purchase", "promo", "admin")
GRANT_SOURCES = (*GRANT_SOURCES_BEFORE, "transfer")
CAP_KINDS_BEFORE = ("key",)
CAP_KINDS = ("key", "member")
ROLLUP_SUMS = [
    "requests",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "credits",
]


def _rollups_keyed_by(*key: str) -> None:
    """Roll-ups under a new key: emptied, and every record marked to be rolled up again (the
    roll-up job recounts them exactly, however many there are)."""
    op.execute("DELETE FROM usage_rollups")
    op.execute("UPDATE usage_records SET rolled_up = false WHERE rolled_up")
    op.drop_index("uq_usage_rollups_key", table_name="usage_rollups")
    op.create_index(
        "uq_usage_rollups_key",
        "usage_rollups",
        list(key),
        unique=True,
        postgresql_include=ROLLUP_SUMS,
    )


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _recheck(table: str, name: str, column: str, values: tuple[str, ...]) -> None:
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(name, type_="check")
        batch.create_check_constraint(name, _one_of(column, values))


def upgrade() -> None:
    _recheck("ledger_entries", "type_known", "type", ENTRY_TYPES)
    _recheck("grants", "source_known", "source", GRANT_SOURCES)
    _recheck("spend_caps", "kind_known", "kind", CAP_KINDS)
    with op.batch_alter_table("ledger_entries") as entries:
        entries.add_column(sa.Column("user_id", ID, nullable=True))
        entries.create_foreign_key("fk_ledger_entries_user_id_users", "users", ["user_id"], ["id"])
    with op.batch_alter_table("holds") as holds:
        holds.add_column(sa.Column("user_id", ID, nullable=True))
        holds.create_foreign_key("fk_holds_user_id_users", "users", ["user_id"], ["id"])
    op.create_index(
        "ix_usage_records_account_created", "usage_records", ["account_id", "created_at"]
    )
    op.add_column("usage_rollups", sa.Column("account_id", sa.BigInteger(), nullable=True))
    _rollups_keyed_by("user_id", "account_id", "day", "provider", "model")
    with op.batch_alter_table("usage_rollups") as rollups:
        rollups.alter_column("account_id", existing_type=sa.BigInteger(), nullable=False)

    op.add_column("spend_caps", sa.Column("account_id", ID, nullable=True))
    op.execute(
        "UPDATE spend_caps SET account_id ="
        " (SELECT api_keys.account_id FROM api_keys WHERE api_keys.cap_id = spend_caps.id)"
    )
    op.add_column("spend_caps", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE spend_caps SET closed_at = (SELECT api_keys.revoked_at FROM api_keys"
        " WHERE api_keys.cap_id = spend_caps.id)"
    )
    with op.batch_alter_table("spend_caps") as batch:
        batch.alter_column("account_id", existing_type=ID, nullable=False)
        batch.create_foreign_key(
            "fk_spend_caps_account_id_accounts", "accounts", ["account_id"], ["id"]
        )
    op.create_index("ix_spend_caps_account_id", "spend_caps", ["account_id"])

    op.add_column("team_members", sa.Column("cap_id", ID, nullable=True))
    connection = op.get_bind()
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spend_caps = sa.table(
        "spend_caps",
        sa.column("id", ID),
        sa.column("account_id", ID),
        sa.column("kind", sa.String),
        sa.column("ceiling", sa.BigInteger),
        sa.column("period", sa.String),
        sa.column("period_start", sa.DateTime(timezone=True)),
        sa.column("spent", sa.BigInteger),
        sa.column("reserved", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    members = sa.table(
        "team_members", sa.column("team_id", ID), sa.column("user_id", ID), sa.column("cap_id", ID)
    )
    accounts = sa.table("accounts", sa.column("id", ID), sa.column("team_id", ID))
    for team_id, user_id, account_id in connection.execute(
        sa.select(members.c.team_id, members.c.user_id, accounts.c.id).join(
            accounts, accounts.c.team_id == members.c.team_id
        )
    ):
        cap_id = connection.execute(
            spend_caps.insert()
            .values(
                account_id=account_id,
                kind="member",
                ceiling=None,
                period="month",
                period_start=month_start,
                spent=0,
                reserved=0,
                created_at=now,
            )
            .returning(spend_caps.c.id)
        ).scalar_one()
        connection.execute(
            members.update()
            .where(members.c.team_id == team_id, members.c.user_id == user_id)
            .values(cap_id=cap_id)
        )
    with op.batch_alter_table("team_members") as batch:
        batch.alter_column("cap_id", existing_type=ID, nullable=False)
        batch.create_unique_constraint("uq_team_members_cap_id", ["cap_id"])
        batch.create_foreign_key(
            "fk_team_members_cap_id_spend_caps", "spend_caps", ["cap_id"], ["id"]
        )


def downgrade() -> None:
    # The earlier schema has no place for moved credits: refuse rather than lose them.
    moved = op.get_bind().scalar(
        sa.text(
            "SELECT COUNT(*) FROM grants WHERE source = 'transfer'"
            " OR id IN (SELECT grant_id FROM ledger_entries"
            " WHERE type IN ('transfer_out', 'transfer_in'))"
        )
    )
    if moved:
        raise RuntimeError(
            "0012 cannot be downgraded: credits were transferred to teams (their entries and"
            " grants have no place in 0011)."
        )
    with op.batch_alter_table("team_members") as batch:
        batch.drop_constraint("fk_team_members_cap_id_spend_caps", type_="foreignkey")
        batch.drop_constraint("uq_team_members_cap_id", type_="unique")
        batch.drop_column("cap_id")
    op.execute(
        "DELETE FROM hold_caps WHERE cap_id IN (SELECT id FROM spend_caps WHERE kind = 'member')"
    )
    op.execute("DELETE FROM spend_caps WHERE kind = 'member'")
    op.drop_index("ix_spend_caps_account_id", table_name="spend_caps")
    with op.batch_alter_table("spend_caps") as batch:
        batch.drop_constraint("fk_spend_caps_account_id_accounts", type_="foreignkey")
        batch.drop_column("account_id")
        batch.drop_column("closed_at")
    _rollups_keyed_by("user_id", "day", "provider", "model")
    with op.batch_alter_table("usage_rollups") as rollups:
        rollups.drop_column("account_id")
    op.drop_index("ix_usage_records_account_created", table_name="usage_records")
    with op.batch_alter_table("holds") as holds:
        holds.drop_constraint("fk_holds_user_id_users", type_="foreignkey")
        holds.drop_column("user_id")
    with op.batch_alter_table("ledger_entries") as entries:
        entries.drop_constraint("fk_ledger_entries_user_id_users", type_="foreignkey")
        entries.drop_column("user_id")
    _recheck("spend_caps", "kind_known", "kind", CAP_KINDS_BEFORE)
    _recheck("grants", "source_known", "source", GRANT_SOURCES_BEFORE)
    _recheck("ledger_entries", "type_known", "type", ENTRY_TYPES_BEFORE)
