"""The usage report: a user's calls and credits over a time range, grouped by day, model or
provider.

Whole UTC days inside the range are read from the roll-ups plus the records not rolled up yet;
the partial days at the ends of the range from the records. Either way every record counts
once, so the report always equals the sums of the raw records. One statement adds it all up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, select, union_all

from creditapp.chat.models import ROLLUP_SUMS, UsageRecord, UsageRollup
from creditapp.database import DbSession, dialect_of
from creditapp.metering.usage import TOKEN_COUNTERS

GROUPINGS = ("day", "model", "provider")


@dataclass(frozen=True)
class UsageReport:
    start: datetime
    end: datetime
    group_by: str
    totals: dict[str, int]
    # (key, sums in the order of ROLLUP_SUMS), in key order
    groups: list[tuple[str, list[int]]]


def _key(session: DbSession, table: Any, group_by: str) -> ColumnElement[Any]:
    if group_by == "day":
        is_rollup = table is UsageRollup.__table__
        column = table.c.day if is_rollup else table.c.created_at
        return dialect_of(session).utc_day(column, is_date=is_rollup)
    if group_by == "model":
        return table.c.provider + literal(":") + table.c.model
    return table.c.provider


def _whole_days(start: datetime, end: datetime) -> tuple[date, date]:
    """The UTC days [first, stop) that lie entirely inside [start, end]."""
    first = start.date() if start.time() == time.min else start.date() + timedelta(days=1)
    stop = (end + timedelta(microseconds=1)).date()
    return first, max(first, stop)


def report(
    session: DbSession, *, user_id: int, start: datetime, end: datetime, group_by: str
) -> UsageReport:
    """Usage of calls made at or after `start` and at or before `end`."""
    first, stop = _whole_days(start, end)
    day_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    day_stop = datetime(stop.year, stop.month, stop.day, tzinfo=UTC)

    records = UsageRecord.__table__
    r = records.c

    def raw(*conditions: Any) -> Any:
        return select(
            _key(session, records, group_by).label("key"),
            literal(1).label("requests"),
            *(r[name].label(name) for name in TOKEN_COUNTERS),
            r.credits_charged.label("credits"),
        ).where(r.user_id == user_id, r.created_at >= start, r.created_at <= end, *conditions)

    # Separate parts, each able to use its index: the records not rolled up (a partial index),
    # and the rolled-up records of the partial days at the ends of the range.
    parts = [raw(~r.rolled_up)]
    if start < day_start:
        parts.append(raw(r.rolled_up, r.created_at < day_start))
    if day_stop <= end:
        parts.append(raw(r.rolled_up, r.created_at >= day_stop))
    rollups = UsageRollup.__table__
    parts.append(
        select(
            _key(session, rollups, group_by).label("key"),
            *(rollups.c[name].label(name) for name in ROLLUP_SUMS),
        ).where(rollups.c.user_id == user_id, rollups.c.day >= first, rollups.c.day < stop)
    )
    combined = union_all(*parts).subquery()
    rows = session.execute(
        # Sums cast back to bigint: whole numbers arrive as ints, not as Decimals to convert.
        select(
            combined.c.key, *(cast(func.sum(combined.c[name]), BigInteger) for name in ROLLUP_SUMS)
        )
        .group_by(combined.c.key)
        .order_by(combined.c.key)
    ).all()
    groups = [(key.isoformat() if isinstance(key, date) else key, sums) for key, *sums in rows]
    columns = zip(*(sums for _key, sums in groups), strict=True)
    totals = dict(zip(ROLLUP_SUMS, (sum(column) for column in columns), strict=False))
    totals = {name: totals.get(name, 0) for name in ROLLUP_SUMS}
    return UsageReport(start, end, group_by, totals, groups)
