"""The usage report: a user's calls and credits over a time range, grouped by day, model,
provider, or day and model together (what a chart of credits per day by model needs); or the
calls paid from one account (a team's), also by member.

Whole UTC days inside the range are read from the roll-ups plus the records not rolled up yet;
the partial days at the ends of the range from the records. Either way every record counts
once, so the report always equals the sums of the raw records. One statement adds it all up.
Roll-ups are by user and account, so a team's report (all its members, or one) reads them as a
user's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, select, union_all

from creditapp.auth.models import User
from creditapp.billing.models import ROLLUP_SUMS, UsageRecord, UsageRollup
from creditapp.database import DbSession, dialect_of
from creditapp.metering.usage import TOKEN_COUNTERS

GROUPINGS = ("day", "model", "provider", "day_model")
# An account's report may also group by the member who made the calls (their email).
ACCOUNT_GROUPINGS = (*GROUPINGS, "member")


@dataclass(frozen=True)
class UsageReport:
    start: datetime
    end: datetime
    group_by: str
    totals: dict[str, int]
    # (key, sums in the order of ROLLUP_SUMS), in key order; a day_model key is the day and the
    # model separated by a space ("2026-11-20 openai:gpt-4o")
    groups: list[tuple[str, list[int]]]


def _keys(session: DbSession, table: Any, group_by: str) -> list[ColumnElement[Any]]:
    """What the rows of `table` are grouped by, labelled key0, key1..."""
    is_rollup = table is UsageRollup.__table__
    day = dialect_of(session).utc_day(
        table.c.day if is_rollup else table.c.created_at, is_date=is_rollup
    )
    model = table.c.provider + literal(":") + table.c.model
    if group_by == "member":
        return [
            select(User.email).where(User.id == table.c.user_id).scalar_subquery().label("key0")
        ]
    parts = {
        "day": [day],
        "model": [model],
        "provider": [table.c.provider],
        "day_model": [day, model],
    }[group_by]
    return [part.label(f"key{index}") for index, part in enumerate(parts)]


def _key_text(parts: list[Any]) -> str:
    return " ".join(part.isoformat() if isinstance(part, date) else part for part in parts)


def _whole_days(start: datetime, end: datetime) -> tuple[date, date]:
    """The UTC days [first, stop) that lie entirely inside [start, end]."""
    first = start.date() if start.time() == time.min else start.date() + timedelta(days=1)
    stop = (end + timedelta(microseconds=1)).date()
    return first, max(first, stop)


def _records(session: DbSession, group_by: str, *conditions: Any) -> Any:
    """The usage records meeting `conditions`, as rows of a report."""
    records = UsageRecord.__table__
    return select(
        *_keys(session, records, group_by),
        literal(1).label("requests"),
        *(records.c[name].label(name) for name in TOKEN_COUNTERS),
        records.c.credits_charged.label("credits"),
    ).where(*conditions)


def report(
    session: DbSession,
    *,
    account_id: int,
    user_id: int | None,
    start: datetime,
    end: datetime,
    group_by: str,
) -> UsageReport:
    """Usage of the calls paid from `account_id` (made by `user_id` only, when given) at or
    after `start` and at or before `end`. A user's own report is of their personal account:
    what they spent from a team is in the team's report."""
    first, stop = _whole_days(start, end)
    day_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    day_stop = datetime(stop.year, stop.month, stop.day, tzinfo=UTC)

    def paid(table: Any) -> list[ColumnElement[bool]]:
        conditions = [table.c.account_id == account_id]
        if user_id is not None:
            conditions.append(table.c.user_id == user_id)
        return conditions

    r = UsageRecord.__table__.c

    def raw(*conditions: Any) -> Any:
        return _records(
            session,
            group_by,
            *paid(UsageRecord.__table__),
            r.created_at >= start,
            r.created_at <= end,
            *conditions,
        )

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
            *_keys(session, rollups, group_by),
            *(rollups.c[name].label(name) for name in ROLLUP_SUMS),
        ).where(*paid(rollups), rollups.c.day >= first, rollups.c.day < stop)
    )
    return _summed(session, union_all(*parts), start=start, end=end, group_by=group_by)


def _summed(
    session: DbSession, parts: Any, *, start: datetime, end: datetime, group_by: str
) -> UsageReport:
    """The report of the rows of `parts` (keys key0..., then the counts of ROLLUP_SUMS),
    summed by key."""
    combined = parts.subquery()
    keys = [column for column in combined.c if column.name.startswith("key")]
    rows = session.execute(
        # Sums cast back to bigint: whole numbers arrive as ints, not as Decimals to convert.
        select(*keys, *(cast(func.sum(combined.c[name]), BigInteger) for name in ROLLUP_SUMS))
        .group_by(*keys)
        .order_by(*keys)
    ).all()
    groups = [(_key_text(list(row[: len(keys)])), list(row[len(keys) :])) for row in rows]
    columns = zip(*(sums for _key, sums in groups), strict=True)
    totals = dict(zip(ROLLUP_SUMS, (sum(column) for column in columns), strict=False))
    totals = {name: totals.get(name, 0) for name in ROLLUP_SUMS}
    return UsageReport(start, end, group_by, totals, groups)
