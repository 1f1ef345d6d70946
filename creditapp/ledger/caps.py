"""Spending caps: what one spender (an API key, a team member) may spend from an account per
period.

A cap is counted beside the balance and enforced the same way: a hold that names caps reserves
its amount in each of them with a conditional update, in the hold's own transaction, before
the account's (locks are taken caps first, in id order, then the account, by holds and
resolutions alike: the account's row, which a team's members share, stays locked no longer for
the caps; a resolution within its hold counts its capture before it locks the account). However
many calls run at once, `spent this period + reserved <= ceiling` holds when each hold is
placed: a call that fits is never refused, one that does not never reaches the provider. When
the hold resolves, its reservation leaves the caps and what it captured counts as spent.

A charge counts in the period in which it is settled (the one its ledger entry is dated in).
A period starts again lazily: the first statement to touch a cap after its period ended counts
from zero, so no job resets caps and a cap check is one row, never a sum over the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from creditapp.database import DbSession, read_time
from creditapp.errors import (
    CapChangedMeanwhile,
    CreditAppError,
    InvalidApiKey,
    KeyLimitReached,
    MemberCapReached,
    NotFound,
    SpendCapReached,
)
from creditapp.ledger import outbox
from creditapp.ledger.models import SpendCap
from creditapp.ledger.sql import (
    CAP_ROOM,
    CAP_STANDING,
    CLOSE_CAP,
    COUNT_RESOLVED_HOLDS_CAPS,
    INSERT_CAP,
    INSERT_HOLD_CAP,
    LOCK_CAP,
    REFUSAL_SIGNALLED,
    RESERVE_CAP,
    RESOLVE_CAPS,
    SET_CEILING,
    SET_PERIOD,
    LedgerSql,
    Statement,
)
from creditapp.money import format_credits

EVER = datetime(1970, 1, 1, tzinfo=UTC)
# The error a hold refused by a cap raises, by the cap's kind.
REFUSALS: dict[str, type[SpendCapReached]] = {"key": KeyLimitReached, "member": MemberCapReached}
# The event a refusal emits, by the cap's kind.
REACHED_EVENTS = {"key": "key.limit_reached", "member": "team.member_cap_reached"}


def _closed(kind: str) -> CreditAppError:
    """What a hold through a closed cap is told: its key was revoked, or its spender is no
    longer a member of the team (which, for them, no longer exists)."""
    if kind == "key":
        return InvalidApiKey("This API key has been revoked.")
    return NotFound("No such team.")


def period_starts(now: datetime) -> dict[str, datetime]:
    """When the current UTC day, ISO week, calendar month and "ever" began."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "day": day,
        "week": day - timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "total": EVER,
    }


def _starts(sql: LedgerSql, now: datetime) -> dict[str, object]:
    starts = period_starts(now)
    return {
        "day": sql.time(starts["day"]),
        "week": sql.time(starts["week"]),
        "month": sql.time(starts["month"]),
        "ever": sql.time(EVER),
    }


@dataclass(frozen=True)
class CapStanding:
    """A cap as of now: its ceiling (None: counted only), what was spent this period, and what
    open holds reserve."""

    ceiling: int | None
    spent: int
    reserved: int


def spent_this_period(cap: SpendCap, *, now: datetime) -> int:
    """What a loaded cap spent in the current period (nothing yet, when it was last touched in
    an earlier one)."""
    return cap.spent if cap.period_start >= period_starts(now)[cap.period] else 0


def open_cap(
    session: DbSession,
    *,
    account_id: int,
    kind: str,
    ceiling: int | None,
    period: str,
    now: datetime,
) -> int:
    """A new cap on what one spender spends from `account_id`."""
    sql = LedgerSql(session)
    row = sql.one(
        INSERT_CAP,
        account=account_id,
        kind=kind,
        ceiling=ceiling,
        period=period,
        start=sql.time(period_starts(now)[period]),
        now=sql.time(now),
    )
    assert row is not None
    return int(row[0])


def set_ceiling(session: DbSession, *, cap_id: int, ceiling: int | None) -> None:
    """A new ceiling applies to holds placed from now on (open ones keep their reservation)."""
    LedgerSql(session).run(SET_CEILING, cap=cap_id, ceiling=ceiling)


def set_period(session: DbSession, *, cap_id: int, period: str, now: datetime) -> None:
    """Count the cap per `period` from now on. What it spent in the current `period` so far is
    recounted from its holds, so that a member moved from a daily to a monthly cap has this
    month's spending counted, not only today's. Open holds keep their reservation."""
    sql = LedgerSql(session)
    current = sql.one(LOCK_CAP, cap=cap_id)
    if current is None:
        raise NotFound("No such spending cap.")
    if current[0] != period:
        sql.run(SET_PERIOD, cap=cap_id, period=period, start=sql.time(period_starts(now)[period]))


def standing(session: DbSession, *, cap_id: int, now: datetime) -> CapStanding:
    sql = LedgerSql(session)
    row = sql.one(CAP_STANDING, cap=cap_id, **_starts(sql, now))
    if row is None:
        raise NotFound("No such spending cap.")
    _kind, ceiling, spent, reserved, _closed_at = row
    return CapStanding(ceiling, int(spent), int(reserved))


def close(session: DbSession, *, cap_id: int, now: datetime) -> None:
    """Refuse every hold through the cap from now on (closing twice changes nothing)."""
    sql = LedgerSql(session)
    sql.run(CLOSE_CAP, cap=cap_id, now=sql.time(now))


def reserving(
    sql: LedgerSql, *, caps: tuple[int, ...], amount: int, now: datetime
) -> list[tuple[Statement, dict[str, Any]]]:
    """The statements that reserve a hold's amount in each of its caps, sent with the account's
    reservation (the caps first: every operation locks a hold's caps before its account);
    `refuse_unreserved` reads what they returned."""
    starts = _starts(sql, now)
    # One order for every hold: no deadlock between two.
    return [(RESERVE_CAP, {"cap": cap_id, "amount": amount, **starts}) for cap_id in sorted(caps)]


def refuse_unreserved(
    sql: LedgerSql,
    *,
    caps: tuple[int, ...],
    reserved: list[list[tuple[Any, ...]]],
    amount: int,
    now: datetime,
) -> None:
    """Raise the error of the first cap that did not reserve (`reserved`: the rows of
    `reserving`'s statements); the caller's transaction then rolls back what the others and
    the account reserved. A closed cap comes first, a key's before a member's: a team key
    whose owner left the team is a revoked key (401), whichever cap is older."""
    standings = []
    for cap_id, rows in zip(sorted(caps), reserved, strict=True):
        if not rows:
            row = sql.one(CAP_STANDING, cap=cap_id, **_starts(sql, now))
            if row is None:
                raise NotFound("No such spending cap.")
            standings.append((cap_id, row))
    if not standings:
        return
    closed = [row[0] for _cap_id, row in standings if row[4] is not None]
    if closed:
        raise _closed(min(closed))  # "key" comes before "member"
    cap_id, (kind, ceiling, spent, cap_reserved, _closed_at) = standings[0]
    if ceiling is None or int(spent) + int(cap_reserved) + amount <= int(ceiling):
        raise CapChangedMeanwhile()
    raise REFUSALS[kind](
        cap_id=cap_id,
        required=amount,
        limit=int(ceiling),
        spent=int(spent),
        reserved=int(cap_reserved),
    )


def announce_reached(sql: LedgerSql, *, cap_id: int, now: datetime) -> None:
    """Emit the event of a cap that refused a hold (`key.limit_reached`,
    `team.member_cap_reached`), once per cap and period: the refused hold's transaction rolled
    back, so this runs in a transaction of its own, after it."""
    row = sql.one(REFUSAL_SIGNALLED, cap=cap_id, **_starts(sql, now))
    if row is None:
        return  # signalled already in this period
    kind, account_id, ceiling, period, key_id, member_id = row
    spender = {"key_id": str(key_id)} if kind == "key" else {"member_user_id": str(member_id)}
    outbox.emit(
        sql,
        account_id=int(account_id),
        event_type=REACHED_EVENTS[kind],
        data={**spender, "limit": format_credits(int(ceiling)), "period": period},
        now=now,
    )


def link(sql: LedgerSql, *, hold_id: int, caps: tuple[int, ...]) -> None:
    for cap_id in sorted(caps):
        sql.run(INSERT_HOLD_CAP, hold=hold_id, cap=cap_id)


def room(sql: LedgerSql, *, hold_id: int, now: datetime) -> tuple[Statement, dict[str, Any]]:
    """The statement that locks a resolving hold's caps and reads each one's room (sent with
    the account's lock, before it: `most_capturable` reads its rows)."""
    return CAP_ROOM, {"hold": hold_id, **_starts(sql, now)}


def most_capturable(rows: list[tuple[Any, ...]], *, released: int) -> int | None:
    """The most a resolving hold may capture without taking any of its caps past its ceiling:
    what it releases plus each cap's room (`room`'s rows; None: no ceiling). A hold captures
    its own amount at least (a lowered ceiling binds new holds only); a late settle, which
    releases nothing, only what room is left."""
    rooms = [int(row[0]) for row in rows if row[0] is not None]
    return min((released + max(room, 0) for room in rooms), default=None)


def counting_resolved(
    sql: LedgerSql, *, resolution: dict[str, Any], now: datetime
) -> tuple[Statement, dict[str, Any]]:
    """The statement sent with a hold's resolution (`resolution`: its hold, actual charge and
    the resolution's token) that counts the charge in its caps when this resolution may lock
    the account at once: a capped hold it resolved within its amount. No row else
    (`resolve` counts it later); `period_began` reads its rows."""
    return COUNT_RESOLVED_HOLDS_CAPS, {**resolution, **_starts(sql, now)}


def resolve(
    sql: LedgerSql, *, hold_id: int, released: int, captured: int, now: datetime
) -> list[tuple[Any, ...]]:
    """Release a resolved hold's reservation from its caps and count what it captured, in each
    cap's current period, once its account is locked; its rows are for `period_began`."""
    return sql.all(
        RESOLVE_CAPS,
        hold=hold_id,
        released=released,
        captured=captured,
        **_starts(sql, now),
    )


def period_began(rows: list[tuple[Any, ...]], *, now: datetime) -> datetime | None:
    """When the newest of the periods `resolve` or `counting_resolved` counted in began, if
    that is after `now` (the hold's resolution time must then move to it), else None."""
    starts = [start for row in rows if (start := read_time(row[0])) is not None]
    newest = max(starts, default=now)
    return newest if newest > now else None
