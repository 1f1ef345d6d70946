"""Usage roll-up: usage records summed per user, paying account, UTC day, provider and model.

Each batch locks the records it takes (on PostgreSQL skipping those another run holds), adds
their sums to the roll-ups and marks them rolled up, all in one transaction: a record is
counted in the roll-ups exactly when it is marked, so re-running, overlapping or crashing never
counts one twice or loses one. Batches walk the not-yet-rolled-up records by id (a partial
index holds exactly those), so a run never rescans what it has done.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update

from creditapp import ledger
from creditapp.billing.models import ROLLUP_SUMS, UsageRecord, UsageRollup
from creditapp.database import DbSession, dialect_of, write_transaction
from creditapp.metering.usage import TOKEN_COUNTERS

BATCH = 20_000

# Where statements write inside WITH (PostgreSQL), a batch is one: lock, mark, sum, upsert.
_ROLL_UP_BATCH = text(f"""
WITH batch AS (
    SELECT id FROM usage_records
    WHERE NOT rolled_up AND id > :after AND created_at < :before
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE usage_records AS record SET rolled_up = true FROM batch
    WHERE record.id = batch.id
    RETURNING record.id, record.user_id, record.account_id, record.created_at, record.provider,
              record.model,
              {", ".join(f"record.{name}" for name in TOKEN_COUNTERS)}, record.credits_charged
), summed AS (
    INSERT INTO usage_rollups (user_id, account_id, day, provider, model,
                               {", ".join(ROLLUP_SUMS)})
    SELECT user_id, account_id, (created_at AT TIME ZONE 'UTC')::date, provider, model, count(*),
           {", ".join(f"sum({name})" for name in TOKEN_COUNTERS)}, sum(credits_charged)
    FROM marked GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (user_id, account_id, day, provider, model) DO UPDATE SET
        {", ".join(f"{name} = usage_rollups.{name} + excluded.{name}" for name in ROLLUP_SUMS)}
    RETURNING 1
)
SELECT count(*), max(id), (SELECT count(*) FROM summed) FROM marked
""")


def _batch_in_one_statement(session: DbSession, *, before: datetime, after: int) -> tuple[int, int]:
    count, last_id, _groups = session.execute(
        _ROLL_UP_BATCH, {"after": after, "before": before, "limit": BATCH}
    ).one()
    return int(count), int(last_id or after)


def _batch_in_python(session: DbSession, *, before: datetime, after: int) -> tuple[int, int]:
    """The same where a statement cannot write inside WITH (SQLite, a single writer: its write
    transaction already excludes others)."""
    records = UsageRecord.__table__.c
    rows = session.execute(
        select(
            records.id,
            records.user_id,
            records.account_id,
            records.created_at,
            records.provider,
            records.model,
            *(records[name] for name in TOKEN_COUNTERS),
            records.credits_charged,
        )
        .where(~records.rolled_up, records.id > after, records.created_at < before)
        .order_by(records.id)
        .limit(BATCH)
    ).all()
    if not rows:
        return 0, after
    sums: dict[tuple[int, int, Any, str, str], list[int]] = defaultdict(
        lambda: [0] * len(ROLLUP_SUMS)
    )
    for row in rows:
        key = (row.user_id, row.account_id, row.created_at.date(), row.provider, row.model)
        totals = sums[key]
        counts = (1, *(row._mapping[name] for name in TOKEN_COUNTERS), row.credits_charged)
        for index, value in enumerate(counts):
            totals[index] += value
    insert = (
        dialect_of(session)
        .insert(UsageRollup)
        .values(
            [
                {
                    "user_id": user_id,
                    "account_id": account_id,
                    "day": day,
                    "provider": provider,
                    "model": model,
                    **dict(zip(ROLLUP_SUMS, totals, strict=True)),
                }
                for (user_id, account_id, day, provider, model), totals in sums.items()
            ]
        )
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["user_id", "account_id", "day", "provider", "model"],
            set_={name: getattr(UsageRollup, name) + insert.excluded[name] for name in ROLLUP_SUMS},
        )
    )
    session.execute(
        update(UsageRecord)
        .where(UsageRecord.id.in_([row.id for row in rows]))
        .values(rolled_up=True)
    )
    return len(rows), rows[-1].id


def run(session: DbSession, *, now: datetime, context: ledger.AuditContext) -> dict[str, int]:
    """Roll up every record made before `now`."""
    batch = _batch_in_one_statement if dialect_of(session).writes_in_with else _batch_in_python
    rolled = after = 0
    while True:
        with write_transaction(session):
            count, after = batch(session, before=now, after=after)
        if not count:
            return {"rolled_up": rolled}
        rolled += count
