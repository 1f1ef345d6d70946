"""The usage report: a user's calls and credits over a time range, grouped by day, model or
provider, summed in the database from the raw usage records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select

from creditapp.chat.models import UsageRecord, UsageRollup
from creditapp.database import DbSession

GROUPINGS = ("day", "model", "provider")
COUNTERS = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@dataclass
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    credits: int = 0

    def add(self, other: UsageTotals) -> None:
        for name in ("requests", *COUNTERS, "credits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class UsageGroup(UsageTotals):
    key: str = ""

    @classmethod
    def of_row(cls, row: Any) -> UsageGroup:
        key, *sums = row
        names = ("requests", *COUNTERS, "credits")
        values = {name: int(value) for name, value in zip(names, sums, strict=True)}
        return cls(key=key.isoformat() if isinstance(key, date) else str(key), **values)


@dataclass
class UsageReport:
    start: datetime
    end: datetime
    group_by: str
    totals: UsageTotals = field(default_factory=UsageTotals)
    groups: list[UsageGroup] = field(default_factory=list)


def _raw_key(session: DbSession, group_by: str) -> ColumnElement[Any]:
    records = UsageRecord.__table__.c
    if group_by == "day":
        if session.get_bind().dialect.name == "sqlite":
            return func.substr(records.created_at, 1, 10)  # naive UTC text "YYYY-MM-DD HH:..."
        return func.to_char(func.timezone("UTC", records.created_at), "YYYY-MM-DD")
    if group_by == "model":
        return records.provider + literal(":") + records.model
    return records.provider


def _rollup_key(group_by: str) -> ColumnElement[Any]:
    rollups = UsageRollup.__table__.c
    if group_by == "day":
        return rollups.day
    if group_by == "model":
        return rollups.provider + literal(":") + rollups.model
    return rollups.provider


def _whole_days(start: datetime, end: datetime) -> tuple[date, date]:
    """The UTC days [first, stop) that lie entirely inside [start, end]."""
    first = start.date() if start.time() == time.min else start.date() + timedelta(days=1)
    stop = (end + timedelta(microseconds=1)).date()
    return first, max(first, stop)


def report(
    session: DbSession, *, user_id: int, start: datetime, end: datetime, group_by: str
) -> UsageReport:
    """Usage of calls made at or after `start` and at or before `end`.

    Whole days inside the range come from the roll-ups plus the records not rolled up yet;
    the partial days at its ends come from the records. Either way every record counts once.
    """
    first, stop = _whole_days(start, end)
    day_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    day_stop = datetime(stop.year, stop.month, stop.day, tzinfo=UTC)
    records = UsageRecord.__table__.c
    raw_key = _raw_key(session, group_by).label("key")
    raw = (
        select(
            raw_key,
            func.count(),
            *(func.sum(records[name]) for name in COUNTERS),
            func.sum(records.credits_charged),
        )
        .where(
            records.user_id == user_id,
            records.created_at >= start,
            records.created_at <= end,
            or_(~records.rolled_up, records.created_at < day_start, records.created_at >= day_stop),
        )
        .group_by(raw_key)
    )
    rollups = UsageRollup.__table__.c
    rolled_key = _rollup_key(group_by).label("key")
    rolled = (
        select(
            rolled_key,
            func.sum(rollups.requests),
            *(func.sum(rollups[name]) for name in COUNTERS),
            func.sum(rollups.credits),
        )
        .where(rollups.user_id == user_id, rollups.day >= first, rollups.day < stop)
        .group_by(rolled_key)
    )
    groups: dict[str, UsageGroup] = {}
    for row in [*session.execute(raw), *session.execute(rolled)]:
        group = UsageGroup.of_row(row)
        if group.key in groups:
            groups[group.key].add(group)
        else:
            groups[group.key] = group
    result = UsageReport(start, end, group_by)
    for key in sorted(groups):
        result.groups.append(groups[key])
        result.totals.add(groups[key])
    return result
