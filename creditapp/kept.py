"""Rows every metered call reads and an admin changes seldom (a tier, the price book, a
conversation's character), kept by each process for a few seconds: a database round trip
costs a call more than the row is worth reading again.

A change made in this process drops its copy at once (`Kept.drop`); one made in another process
applies everywhere within `KEPT_SECONDS`. Never for what must apply at once everywhere: a
revoked session or API key, a balance, a spending cap. Copies are per database (an engine), so
that a process serving two databases (tests, migrations) never answers one from the other.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine

from creditapp.database import DbSession

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# How long a process trusts its copy of a row another process may change.
KEPT_SECONDS = 5.0
# The most copies of one kind a process keeps per database: a key can come from a request (a
# model's name), so the copies are bounded; past this, the oldest go.
MOST_KEPT = 1024


_every_kind: weakref.WeakSet[Kept[Any, Any]] = weakref.WeakSet()


def forget_everything() -> None:
    """Drop every copy of this process: for a database emptied behind its back (the tests empty
    theirs between tests, and its ids start again)."""
    for kind in list(_every_kind):
        with kind._lock:
            kind._copies.clear()


class Kept(Generic[K, V]):
    """One kind of row kept (a value read by `load`), by key, per database."""

    def __init__(self, seconds: float = KEPT_SECONDS) -> None:
        self._seconds = seconds
        self._copies: weakref.WeakKeyDictionary[Engine, dict[K, tuple[float, V]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._drops = 0  # how many changes this process made: a read overlapping one is not kept
        _every_kind.add(self)

    def _of(self, session: DbSession) -> dict[K, tuple[float, V]]:
        engine = session.get_bind()
        assert isinstance(engine, Engine)
        copies = self._copies.get(engine)  # the usual case: no lock taken
        if copies is not None:
            return copies
        with self._lock:
            return self._copies.setdefault(engine, {})

    def get(
        self,
        session: DbSession,
        key: K,
        load: Callable[[], V],
        *,
        worth_keeping: Callable[[V], bool] = lambda _value: True,
    ) -> V:
        """The copy of `key`, or what `load` reads now (kept if `worth_keeping`: a miss is not,
        where a request names the key, so that made-up names push out no real copy)."""
        copies = self._of(session)
        copy = copies.get(key)
        if copy is not None and time.monotonic() - copy[0] < self._seconds:
            return copy[1]
        # Stamped as of before the read: a copy is never trusted longer than its row was seen.
        read_at, drops = time.monotonic(), self._drops
        value = load()
        if not worth_keeping(value):
            return value
        with self._lock:
            if self._drops != drops:  # something changed while it was read: read it next time
                return value
            if len(copies) >= MOST_KEPT:
                for oldest in sorted(copies, key=lambda each: copies[each][0])[: MOST_KEPT // 4]:
                    del copies[oldest]
            copies[key] = (read_at, value)
        return value

    def drop(self, session: DbSession, key: K) -> None:
        """Forget `key`'s copy: it changed in this process. (Called as the change is written:
        a call that reads the row again before the change commits keeps the old row for at most
        `seconds` more, as in another process.)"""
        copies = self._of(session)
        with self._lock:
            self._drops += 1
            copies.pop(key, None)
