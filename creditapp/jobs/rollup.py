"""Usage roll-up: usage records summed per user, UTC day, provider and model.

Each batch locks the records it takes (skipping those another run holds), adds their sums to
the roll-ups and marks them rolled up, all in one transaction: a record is counted in the
roll-ups exactly when it is marked, so re-running, overlapping or crashing never counts one
twice or loses one.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from creditapp import ledger
from creditapp.chat.models import UsageRecord, UsageRollup
from creditapp.chat.usage_report import COUNTERS
from creditapp.database import DbSession, write_transaction

BATCH = 5000
SUMMED = ("requests", *COUNTERS, "credits")


def _roll_up_batch(session: DbSession, *, before: datetime) -> int:
    records = UsageRecord.__table__.c
    is_postgresql = session.get_bind().dialect.name == "postgresql"
    query = (
        select(
            records.id,
            records.user_id,
            records.created_at,
            records.provider,
            records.model,
            *(records[name] for name in COUNTERS),
            records.credits_charged,
        )
        .where(~records.rolled_up, records.created_at < before)
        .order_by(records.id)
        .limit(BATCH)
    )
    if is_postgresql:
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    if not rows:
        return 0
    sums: dict[tuple[int, Any, str, str], list[int]] = defaultdict(lambda: [0] * len(SUMMED))
    for row in rows:
        totals = sums[(row.user_id, row.created_at.date(), row.provider, row.model)]
        for index, value in enumerate(
            (1, *(row._mapping[name] for name in COUNTERS), row.credits_charged)
        ):
            totals[index] += value
    insert = (postgresql_insert if is_postgresql else sqlite_insert)(UsageRollup)
    insert = insert.values(
        [
            {
                "user_id": user_id,
                "day": day,
                "provider": provider,
                "model": model,
                **dict(zip(SUMMED, totals, strict=True)),
            }
            for (user_id, day, provider, model), totals in sums.items()
        ]
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["user_id", "day", "provider", "model"],
            set_={name: getattr(UsageRollup, name) + insert.excluded[name] for name in SUMMED},
        )
    )
    session.execute(
        update(UsageRecord)
        .where(UsageRecord.id.in_([row.id for row in rows]))
        .values(rolled_up=True)
    )
    return len(rows)


def run(session: DbSession, *, now: datetime, context: ledger.AuditContext) -> dict[str, int]:
    """Roll up every record made before `now`."""
    rolled = 0
    while True:
        with write_transaction(session):
            count = _roll_up_batch(session, before=now)
        if not count:
            return {"rolled_up": rolled}
        rolled += count
