"""A provider call may end `timed_out`: a stream settled by its deadline, before its hold
expires, for what it delivered by then.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ENDINGS_BEFORE = ("completed", "client_closed", "provider_failed")
ENDINGS = (*ENDINGS_BEFORE, "timed_out")
TABLES = ("usage_records", "unbilled_usage")


def _endings_known(endings: tuple[str, ...]) -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint("ending_known", type_="check")
            batch.create_check_constraint(
                "ending_known", "ending IN (" + ", ".join(f"'{e}'" for e in endings) + ")"
            )


def upgrade() -> None:
    _endings_known(ENDINGS)


def downgrade() -> None:
    # Calls that ended by their deadline were charged as a client's early close is.
    for table in TABLES:
        op.execute(f"UPDATE {table} SET ending = 'client_closed' WHERE ending = 'timed_out'")
    _endings_known(ENDINGS_BEFORE)
