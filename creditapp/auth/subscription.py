"""Subscription periods: calendar months counted from the user's anchor.

A user anchored on the 31st renews on the last day of shorter months (and on the 31st again
where the month has one): the n-th period starts at anchor + n months, day clamped to the month.
A period is named by the month it starts in ("2026-11"), which is unique per user.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dateutil.relativedelta import relativedelta


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime
    end: datetime


def _months_after(anchor: datetime, months: int) -> datetime:
    # relativedelta keeps the anchor's day, clamped to the last day of shorter months.
    return anchor + relativedelta(months=months)


def period_at(anchor: datetime, now: datetime) -> Period:
    """The period containing `now` (the first period if `now` is before the anchor). Months
    are counted in UTC, as anchors are stored: `now` in another offset is converted, or its
    year and month could be the previous period's."""
    now = now.astimezone(UTC)
    months = max((now.year - anchor.year) * 12 + now.month - anchor.month, 0)
    while months > 0 and _months_after(anchor, months) > now:
        months -= 1
    start = _months_after(anchor, months)
    return Period(f"{start.year:04d}-{start.month:02d}", start, _months_after(anchor, months + 1))
