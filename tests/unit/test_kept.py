"""Kept copies: read once per key and database, read again once stale or dropped, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from creditapp import kept
from creditapp.kept import MOST_KEPT, Kept


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    ticking = _Clock()
    monkeypatch.setattr(kept.time, "monotonic", ticking)
    return ticking


def _reader(values: dict[str, int], reads: list[str]) -> Any:
    def read(key: str) -> Any:
        def load() -> int:
            reads.append(key)
            return values[key]

        return load

    return read


def test_a_copy_is_read_once_until_it_is_stale_or_dropped(clock: _Clock) -> None:
    session = Session(create_engine("sqlite://"))
    values, reads = {"free": 1}, []
    read = _reader(values, reads)
    copies: Kept[str, int] = Kept(seconds=5)

    assert copies.get(session, "free", read("free")) == 1
    values["free"] = 2
    clock.now += 4.9
    assert copies.get(session, "free", read("free")) == 1  # still trusted
    clock.now += 0.1
    assert copies.get(session, "free", read("free")) == 2  # stale: read again
    values["free"] = 3
    copies.drop(session, "free")  # changed in this process: at once
    assert copies.get(session, "free", read("free")) == 3
    assert reads == ["free"] * 3


def test_each_database_has_its_own_copies(clock: _Clock) -> None:
    one, other = Session(create_engine("sqlite://")), Session(create_engine("sqlite://"))
    copies: Kept[str, str] = Kept()
    assert copies.get(one, "tier", lambda: "one's") == "one's"
    assert copies.get(other, "tier", lambda: "other's") == "other's"
    assert copies.get(one, "tier", lambda: "read again") == "one's"


def test_a_load_that_fails_keeps_nothing(clock: _Clock) -> None:
    session = Session(create_engine("sqlite://"))
    copies: Kept[str, int] = Kept()

    def missing() -> int:
        raise LookupError("no such row")

    with pytest.raises(LookupError):
        copies.get(session, "gone", missing)
    assert copies.get(session, "gone", lambda: 7) == 7


def test_copies_are_bounded_the_oldest_going_first(clock: _Clock) -> None:
    session = Session(create_engine("sqlite://"))
    copies: Kept[int, int] = Kept()
    for key in range(MOST_KEPT):
        clock.now += 0.001
        copies.get(session, key, lambda key=key: key)  # type: ignore[misc]
    copies.get(session, MOST_KEPT, lambda: MOST_KEPT)
    reads: list[int] = []

    def again(key: int) -> Any:
        return lambda: reads.append(key) or key

    copies.get(session, 0, again(0))  # among the oldest: gone
    copies.get(session, MOST_KEPT - 1, again(MOST_KEPT - 1))  # among the newest: kept
    assert reads == [0]


def test_a_read_overlapping_a_change_is_not_kept(clock: _Clock) -> None:
    session = Session(create_engine("sqlite://"))
    copies: Kept[str, str] = Kept()

    def read_while_it_changes() -> str:
        copies.drop(session, "tier")  # the change is written while the old row is read
        return "old"

    assert copies.get(session, "tier", read_while_it_changes) == "old"
    assert copies.get(session, "tier", lambda: "new") == "new"


def test_what_is_not_worth_keeping_is_read_again(clock: _Clock) -> None:
    session = Session(create_engine("sqlite://"))
    copies: Kept[str, tuple[int, ...]] = Kept()
    assert copies.get(session, "made-up", lambda: (), worth_keeping=bool) == ()
    assert copies.get(session, "made-up", lambda: (1,), worth_keeping=bool) == (1,)
