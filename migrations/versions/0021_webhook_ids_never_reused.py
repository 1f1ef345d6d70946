"""Webhook events and deliveries keep their ids for good on SQLite (AUTOINCREMENT): a table's
next id there is its largest id + 1, so once the retention purge had emptied `webhook_events`
the next event was `evt_1` again, a `webhook-id` its receivers had seen and, deduplicating as
Standard Webhooks asks, dropped. PostgreSQL's sequences never give an id twice: nothing to do.
A table the purge had already emptied starts again at 1 once more (its past ids are gone).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

TABLES = ("webhook_events", "webhook_deliveries")


def _autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": on}
        ):
            pass


def upgrade() -> None:
    _autoincrement(True)


def downgrade() -> None:
    _autoincrement(False)
