"""Subscription periods: calendar months from the anchor, clamped to shorter months."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from creditapp.auth.subscription import period_at


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "now", "label", "start", "end"),
    [
        # Anchored on the 31st: the last day of shorter months, the 31st again where it exists.
        ("2026-01-31 10:00", "2026-02-27 23:59", "2026-01", "2026-01-31 10:00", "2026-02-28 10:00"),
        ("2026-01-31 10:00", "2026-02-28 10:00", "2026-02", "2026-02-28 10:00", "2026-03-31 10:00"),
        ("2026-01-31 10:00", "2026-04-30 10:00", "2026-04", "2026-04-30 10:00", "2026-05-31 10:00"),
        # Leap years: February 29th exists in 2028, not in 2027.
        ("2027-01-31 00:00", "2027-02-28 00:00", "2027-02", "2027-02-28 00:00", "2027-03-31 00:00"),
        ("2028-01-31 00:00", "2028-02-28 23:00", "2028-01", "2028-01-31 00:00", "2028-02-29 00:00"),
        ("2028-01-31 00:00", "2028-02-29 00:00", "2028-02", "2028-02-29 00:00", "2028-03-31 00:00"),
        # Anchored on February 29th: the 28th in other years, the 29th in leap years.
        ("2028-02-29 12:00", "2029-02-28 12:00", "2029-02", "2029-02-28 12:00", "2029-03-29 12:00"),
        ("2028-02-29 12:00", "2032-02-29 11:59", "2032-01", "2032-01-29 12:00", "2032-02-29 12:00"),
        # Several periods missed: the one containing now, across a year end.
        ("2026-11-15 08:00", "2027-03-20 00:00", "2027-03", "2027-03-15 08:00", "2027-04-15 08:00"),
        ("2026-12-31 23:59", "2027-01-01 00:00", "2026-12", "2026-12-31 23:59", "2027-01-31 23:59"),
        # Before the anchor: the first period.
        ("2026-11-15 08:00", "2026-11-01 00:00", "2026-11", "2026-11-15 08:00", "2026-12-15 08:00"),
    ],
)
def test_periods(anchor: str, now: str, label: str, start: str, end: str) -> None:
    period = period_at(at(anchor), at(now))
    assert (period.label, period.start, period.end) == (label, at(start), at(end))


def test_a_moment_in_another_offset_is_in_the_period_its_utc_time_is_in() -> None:
    """20:00 at -05:00 on January 31st is February 1st in UTC: the second period, whose
    start has passed (read as January, the period was one already over)."""
    evening = datetime.fromisoformat("2026-01-31T20:00:00-05:00")
    period = period_at(at("2026-01-01 00:00"), evening)
    assert (period.label, period.start) == ("2026-02", at("2026-02-01 00:00"))
    assert period.start <= evening < period.end
