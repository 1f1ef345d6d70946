"""Idempotency-Keys sent through an API key belong to its owner's scope (`user:<id>`), as a
signed-in user's do (contract, section 4: same user + key): the keys stored under an API key's
own scope (`key:<id>`) move to its owner's, so that a retry sent after the upgrade finds the
response of its request sent before. A key the owner already used under their own scope stays
where it is (a retry of it replayed the owner's; it expires within the retention).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    stored = connection.execute(
        sa.text(
            "SELECT k.id, k.key, a.user_id FROM idempotency_keys k"
            " JOIN api_keys a ON k.scope = 'key:' || CAST(a.id AS VARCHAR(20))"
            " ORDER BY k.id"
        )
    ).all()
    taken = {
        (scope, key)
        for scope, key in connection.execute(
            sa.text("SELECT scope, key FROM idempotency_keys WHERE scope LIKE 'user:%'")
        )
    }
    for key_id, key, owner in stored:
        scope = f"user:{owner}"
        if (scope, key) in taken:
            continue
        taken.add((scope, key))
        connection.execute(
            sa.text("UPDATE idempotency_keys SET scope = :scope WHERE id = :id"),
            {"scope": scope, "id": key_id},
        )


def downgrade() -> None:
    """Nothing to undo: a user's keys are the previous release's scope for signed-in calls,
    and an API key's calls there look under the key's own (a retry across the downgrade runs
    again, as one across 0009's did)."""
