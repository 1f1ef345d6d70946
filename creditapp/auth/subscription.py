"""Subscription periods: calendar months counted from the user's anchor.

A user anchored on the 31st renews on the last day of shorter months (and on the 31st again
where the month has one): the n-th period starts at anchor + n months, day clamped to the month.
A period is named by the month it starts in ("2026-11"), which is unique per user.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime
    end: datetime


def add_months(anchor: datetime, months: int) -> datetime:
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_at(anchor: datetime, now: datetime) -> Period:
    """The period containing `now` (the first period if `now` is before the anchor)."""
    months = max((now.year - anchor.year) * 12 + now.month - anchor.month, 0)
    while months > 0 and add_months(anchor, months) > now:
        months -= 1
    start = add_months(anchor, months)
    return Period(f"{start.year:04d}-{start.month:02d}", start, add_months(anchor, months + 1))
