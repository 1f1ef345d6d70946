"""The usage report: a user's calls and credits over a time range, grouped by day, model or
provider, summed in the database from the raw usage records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select

from creditapp.chat.models import UsageRecord
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
        return cls(
            key=str(key), **{name: int(value) for name, value in zip(names, sums, strict=True)}
        )


@dataclass
class UsageReport:
    start: datetime
    end: datetime
    group_by: str
    totals: UsageTotals = field(default_factory=UsageTotals)
    groups: list[UsageGroup] = field(default_factory=list)


def _group_key(session: DbSession, group_by: str) -> ColumnElement[Any]:
    created = UsageRecord.__table__.c.created_at
    if group_by == "day":
        if session.get_bind().dialect.name == "sqlite":
            return func.substr(created, 1, 10)  # stored as naive UTC text "YYYY-MM-DD HH:..."
        return func.to_char(func.timezone("UTC", created), "YYYY-MM-DD")
    if group_by == "model":
        return UsageRecord.__table__.c.provider + literal(":") + UsageRecord.__table__.c.model
    return UsageRecord.__table__.c.provider


def report(
    session: DbSession, *, user_id: int, start: datetime, end: datetime, group_by: str
) -> UsageReport:
    """Usage of calls made at or after `start` and at or before `end`."""
    key = _group_key(session, group_by).label("key")
    rows = session.execute(
        select(
            key,
            func.count(),
            *(func.sum(getattr(UsageRecord, name)) for name in COUNTERS),
            func.sum(UsageRecord.credits_charged),
        )
        .where(
            UsageRecord.user_id == user_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at <= end,
        )
        .group_by(key)
        .order_by(key)
    ).all()
    result = UsageReport(start, end, group_by)
    for row in rows:
        group = UsageGroup.of_row(row)
        result.groups.append(group)
        result.totals.add(group)
    return result
