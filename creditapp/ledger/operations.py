"""Ledger operations: each computes its change on a locked snapshot and persists it in one place.

Every function takes the caller's session and does not commit: the caller wraps the call in
`creditapp.database.write_transaction`, so that the operation, its entries and its audit record
commit together (and, for HTTP requests, together with the stored idempotent response).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial, wraps
from typing import Any, ParamSpec, TypeVar

from creditapp.database import DbSession, read_time
from creditapp.errors import (
    AmountNotPositive,
    BalanceWouldGoNegative,
    CapChangedMeanwhile,
    CreditAppError,
    ExpiryNotInFuture,
    HoldNotExpired,
    InsufficientCredits,
    NegativeCharge,
    NotFound,
    SubscriptionCreditsByRefreshOnly,
    TransferCreditsByTransferOnly,
    TransferToSameAccount,
    UnknownGrantSource,
    ZeroAdjustment,
)
from creditapp.ledger import alerts
from creditapp.ledger import caps as spend_caps
from creditapp.ledger.models import GRANT_SOURCES, Grant
from creditapp.ledger.sql import (
    BALANCE_AS_OF,
    CHANGE_GRANT,
    CLAWED_BACK,
    DATE_RESOLUTION,
    EXPIRED_CREDIT_ACCOUNTS,
    HOLD_STATE,
    INSERT_ACCOUNT,
    INSERT_AUDIT,
    INSERT_ENTRY,
    INSERT_GRANT,
    INSERT_HOLD,
    LATER_PERIOD_GRANT,
    LIVE_GRANTS,
    LOCK_ACCOUNT,
    LOCK_RESOLVED_HOLDS_ACCOUNT,
    NOT_REFUSED,
    OPEN_HOLDS,
    OVERDUE_HOLDS,
    PERIOD_GRANT,
    READ_ACCOUNT,
    RECORD_CAPTURE,
    REFUSABLE,
    REFUSED,
    RESERVE,
    RESOLVE_HOLD,
    RESOLVED_HOLDS_LIVE_GRANTS,
    SETTLE_EXPIRED_HOLD,
    STORE_ACCOUNT,
    LedgerSql,
)
from creditapp.metrics import LEDGER_OPERATIONS
from creditapp.money import format_credits

P = ParamSpec("P")
R = TypeVar("R")


def _counted(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count the operation in `creditapp_ledger_operations_total{operation,outcome}`: `ok`, or
    the code of the rule that refused it (counted when it returns, before its caller commits)."""

    def decorator(function: Callable[P, R]) -> Callable[P, R]:
        @wraps(function)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = function(*args, **kwargs)
            except CreditAppError as error:
                LEDGER_OPERATIONS.labels(operation, error.code).inc()
                raise
            LEDGER_OPERATIONS.labels(operation, "ok").inc()
            return result

        return counted

    return decorator


@dataclass(frozen=True)
class AuditContext:
    """Who caused an operation and through which request; copied into its audit record."""

    actor_type: str
    actor_id: str | None = None
    request_id: str | None = None
    client_ip: str | None = None


@dataclass(frozen=True)
class Balance:
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class GrantResult:
    grant_id: int
    created: bool
    balance: Balance


@dataclass(frozen=True)
class HoldResult:
    hold_id: int
    amount: int
    expires_at: datetime
    balance: Balance


@dataclass(frozen=True)
class Resolution:
    """How a hold was resolved. `applied` is true only for the call that resolved it; `late`
    marks a settle that came after the hold had expired."""

    hold_id: int
    status: str
    captured: int
    uncollected: int
    applied: bool
    late: bool = False
    # The account once resolved, as `balance` would read it then (the resolution wrote off
    # what had expired); None when not resolved now.
    balance: Balance | None = None


@dataclass
class _LiveGrant:
    id: int
    remaining: int
    expires_at: datetime | None
    source: str

    def overdue(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def drawable(self, now: datetime, held_since: datetime | None) -> bool:
        """Unexpired, or expired after the hold being settled was placed (`held_since`)."""
        if not self.overdue(now):
            return True
        return (
            held_since is not None and self.expires_at is not None and held_since < self.expires_at
        )


@dataclass
class _PendingEntry:
    type: str
    grant_id: int
    amount: int


@dataclass
class _AccountState:
    """An account locked for this transaction, with its live grants in draw order.

    Operations change it in memory; `_persist` writes the difference.
    """

    id: int
    balance: int
    reserved: int
    last_seq: int | None
    last_entry_at: datetime | None
    grants: list[_LiveGrant]
    watched: bool
    # When each open hold was placed, and its amount (read once, when needed: `holds_open`).
    open_holds: Callable[[], list[tuple[datetime, int]]]
    initial_balance: int = field(init=False)
    initial_reserved: int = field(init=False)
    pending: list[_PendingEntry] = field(default_factory=list)
    _holds_read: list[tuple[datetime, int]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.initial_balance = self.balance
        self.initial_reserved = self.reserved

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def post(self, entry_type: str, live_grant: _LiveGrant, amount: int) -> None:
        live_grant.remaining += amount
        self.balance += amount
        self.pending.append(_PendingEntry(entry_type, live_grant.id, amount))

    def holds_open(self) -> list[tuple[datetime, int]]:
        """The account's open holds, read once: none is placed or resolved while it is locked
        (a resolving hold is no longer open: `write_off_overdue`'s `resolving`)."""
        if self._holds_read is None:
            self._holds_read = self.open_holds()
        return self._holds_read

    def write_off_overdue(
        self, now: datetime, *, resolving: tuple[datetime, int] | None = None
    ) -> None:
        """Write off expired remainders, keeping what open holds placed before the expiry still
        claim (an authorization made while the credits were valid is honoured). Holds draw the
        soonest-expiring grants first, so what holds placed before a grant's expiry reserved
        is that grant's first, in draw order; a hold placed after it claims none of it.
        `resolving`: a hold being resolved, no longer open in the database, that has not drawn
        yet. Never more than is available: what holds reserve stays."""
        overdue = [g for g in self.grants if g.overdue(now) and g.remaining > 0]
        if not overdue:
            return
        holds = self.holds_open() + ([resolving] if resolving is not None else [])
        writable = self.available
        claimed = 0  # by holds, of the grants before this one in draw order
        for live_grant in overdue:  # in draw order: the soonest expiry first
            assert live_grant.expires_at is not None
            placed_before = sum(
                amount for placed, amount in holds if placed < live_grant.expires_at
            )
            kept = min(live_grant.remaining, max(0, placed_before - claimed))
            claimed += kept
            amount = min(live_grant.remaining - kept, writable)
            if amount > 0:
                self.post("expire", live_grant, -amount)
                writable -= amount

    def draw(
        self,
        amount: int,
        entry_type: str,
        now: datetime,
        *,
        held_since: datetime | None = None,
        first_grant_id: int | None = None,
    ) -> None:
        """Take `amount` from the grants in draw order (`first_grant_id`'s first, when given).
        Callers check it is there. An expired grant is drawn only by a live hold placed before
        it expired (`held_since`: when the hold being settled was placed): it reserved those
        credits while they were valid."""
        left = amount
        grants = self.grants
        if first_grant_id is not None:  # sorted is stable: the others keep their draw order
            grants = sorted(grants, key=lambda grant: grant.id != first_grant_id)
        for live_grant in grants:
            if left == 0:
                break
            if live_grant.remaining == 0 or not live_grant.drawable(now, held_since):
                continue
            taken = min(live_grant.remaining, left)
            self.post(entry_type, live_grant, -taken)
            left -= taken
        if left:
            raise AssertionError(f"draw of {amount} left {left} undrawn on account {self.id}")


def _load(sql: LedgerSql, account_id: int, *, lock: bool = True) -> _AccountState:
    """Lock the account row (PostgreSQL; `lock=False` for what only looks), then read its live
    grants in draw order.

    Two statements on purpose (sent together): under READ COMMITTED a statement that waited for
    the row lock sees the locked row's newest version but every other row as of its start, so
    grants read in the same statement could be stale. The second statement starts after the
    lock is ours.
    """
    account_rows, grant_rows = sql.together(
        (LOCK_ACCOUNT if lock else READ_ACCOUNT, {"account": account_id}),
        (LIVE_GRANTS, {"account": account_id}),
    )
    return _state_of(sql, account_id, account_rows, grant_rows)


def _state_of(
    sql: LedgerSql,
    account_id: int,
    account_rows: list[tuple[Any, ...]],
    grant_rows: list[tuple[Any, ...]],
) -> _AccountState:
    """The account as `_load` reads it: its row and its live grants' rows."""
    if not account_rows:
        raise NotFound("No such account.")
    balance_now, reserved, last_seq, last_entry_at, watched = account_rows[0]
    return _AccountState(
        id=account_id,
        balance=balance_now,
        reserved=reserved,
        last_seq=last_seq,
        last_entry_at=read_time(last_entry_at),
        grants=[
            _LiveGrant(grant_id, remaining, read_time(expires_at), source)
            for grant_id, remaining, expires_at, source in grant_rows
        ],
        watched=bool(watched),
        open_holds=partial(_open_holds, sql, account_id),
    )


def _open_holds(sql: LedgerSql, account_id: int) -> list[tuple[datetime, int]]:
    return [
        (_placed_at(created_at), int(amount))
        for created_at, amount in sql.all(OPEN_HOLDS, account=account_id)
    ]


def _placed_at(created_at: Any) -> datetime:
    placed = read_time(created_at)
    assert placed is not None, "a hold has its created_at (NOT NULL)"
    return placed


def _links(hold_id: int | None, reference: str | None) -> dict[str, str]:
    links = {"hold_id": str(hold_id)} if hold_id is not None else {}
    return links | ({"reference": reference} if reference is not None else {})


def _audit(
    sql: LedgerSql,
    *,
    account_id: int | None,
    action: str,
    context: AuditContext,
    now: datetime,
    before: Balance | None,
    after: Balance | None,
    details: dict[str, Any],
) -> None:
    """Write the audit record of an operation (`before` and `after` None if it moved no
    credits). Its id is not read back: entries written next name it (`INSERT_ENTRY`)."""
    sql.run(
        INSERT_AUDIT,
        actor_type=context.actor_type,
        actor_id=context.actor_id,
        action=action,
        account=account_id,
        balance_before=None if before is None else before.balance,
        balance_after=None if after is None else after.balance,
        reserved_before=None if before is None else before.reserved,
        reserved_after=None if after is None else after.reserved,
        request_id=context.request_id,
        client_ip=context.client_ip,
        details=sql.json(details),
        now=sql.time(now),
    )


def _persist(
    sql: LedgerSql,
    state: _AccountState,
    *,
    action: str,
    context: AuditContext,
    now: datetime,
    hold_id: int | None = None,
    reference: str | None = None,
    details: dict[str, Any] | None = None,
    user_id: int | None = None,
) -> Balance:
    """Write the operation's audit record, its entries, the grants' and the account's new state.
    The entries name `user_id`, the user whose spending, transfer or purchase caused them.

    They are stamped `now`, or the time of the account's newest entry if that is later: `now`
    was taken before the account's lock was ours, and an operation that got the lock first may
    have stamped a later time. Along an account's chain, time never goes backwards.
    """
    if state.last_entry_at is not None and state.last_entry_at > now:
        now = state.last_entry_at
    _audit(
        sql,
        account_id=state.id,
        action=action,
        context=context,
        now=now,
        before=Balance(state.initial_balance, state.initial_reserved),
        after=Balance(state.balance, state.reserved),
        details={**(details or {}), **_links(hold_id, reference)},
    )

    seq = state.last_seq or 0
    running = state.initial_balance
    stored_now = sql.time(now)
    rows = []
    grant_changes: dict[int, int] = defaultdict(int)
    for pending in state.pending:
        seq += 1
        rows.append(
            {
                "account": state.id,
                "seq": seq,
                "prev_seq": seq - 1 if seq > 1 else None,
                "type": pending.type,
                "amount": pending.amount,
                "balance_before": running,
                "balance_after": running + pending.amount,
                "grant": pending.grant_id,
                "hold": hold_id,
                "reference": reference,
                "request_id": context.request_id,
                # A write-off of expired credits is no one's doing, whoever's operation wrote it.
                "user": None if pending.type == "expire" else user_id,
                "now": stored_now,
            }
        )
        running += pending.amount
        grant_changes[pending.grant_id] += pending.amount
    if rows:
        sql.run_many(INSERT_ENTRY, rows)
        sql.run_many(
            CHANGE_GRANT,
            [{"grant": grant_id, "change": change} for grant_id, change in grant_changes.items()],
        )
    sql.run(
        STORE_ACCOUNT,
        account=state.id,
        balance=state.balance,
        reserved=state.reserved,
        last_seq=seq or None,
        last_entry_at=stored_now if rows else sql.time(state.last_entry_at),
    )
    if rows:
        state.last_entry_at = now
    state.pending.clear()
    if state.watched:
        alerts.available_moved(
            sql,
            account_id=state.id,
            before=state.initial_balance - state.initial_reserved,
            after=state.available,
            now=now,
        )
    return Balance(state.balance, state.reserved)


def record_action(
    session: DbSession,
    *,
    action: str,
    context: AuditContext,
    now: datetime,
    details: dict[str, Any],
    account_id: int | None = None,
) -> None:
    """Audit an action that changes no balance (a tier change, a new price)."""
    _audit(
        LedgerSql(session),
        account_id=account_id,
        action=action,
        context=context,
        now=now,
        before=None,
        after=None,
        details=details,
    )


def set_thresholds(
    session: DbSession,
    *,
    account_id: int,
    amounts: list[int],
    context: AuditContext,
    now: datetime,
) -> list[alerts.Threshold]:
    """Replace the account's low-balance thresholds (`alerts.set_thresholds`), audited
    (`alert_thresholds_set`) with what they were and what they are."""
    sql = LedgerSql(session)
    if sql.one(LOCK_ACCOUNT, account=account_id) is None:
        raise NotFound("No such account.")
    before = alerts.thresholds(session, account_id=account_id)
    after = alerts.set_thresholds(session, account_id=account_id, amounts=amounts, now=now)
    record_action(
        session,
        action="alert_thresholds_set",
        context=context,
        now=now,
        account_id=account_id,
        details={
            "before": [format_credits(threshold.amount) for threshold in before],
            "after": [format_credits(threshold.amount) for threshold in after],
        },
    )
    return after


def open_account(
    session: DbSession, *, user_id: int | None = None, team_id: int | None = None, now: datetime
) -> int:
    """Create an empty account owned by a user or by a team (exactly one) and return its id."""
    sql = LedgerSql(session)
    row = sql.one(INSERT_ACCOUNT, user=user_id, team=team_id, now=sql.time(now))
    assert row is not None
    return int(row[0])


def _new_grant(
    sql: LedgerSql,
    state: _AccountState,
    *,
    source: str,
    amount: int,
    entry_type: str,
    now: datetime,
    expires_at: datetime | None = None,
    period: str | None = None,
    reason: str | None = None,
) -> int:
    if source not in GRANT_SOURCES:
        raise UnknownGrantSource(source)
    if amount <= 0:
        raise AmountNotPositive("A grant's amount must be positive.")
    # Inserted empty: the entry below fills it, so the grant's remaining is its entries' sum.
    row = sql.one(
        INSERT_GRANT,
        account=state.id,
        source=source,
        amount=amount,
        expires_at=sql.time(expires_at),
        period=period,
        reason=reason,
        now=sql.time(now),
    )
    assert row is not None
    grant_id = int(row[0])
    live_grant = _LiveGrant(grant_id, 0, expires_at, source)
    state.grants.append(live_grant)
    state.post(entry_type, live_grant, amount)
    return grant_id


@_counted("grant")
def grant(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    source: str,
    reason: str,
    context: AuditContext,
    now: datetime,
    expires_at: datetime | None = None,
    reference: str | None = None,
    audit_details: dict[str, str] | None = None,
    user_id: int | None = None,
) -> GrantResult:
    """Add credits as a new grant (purchase, promo or admin). `reference` names what the grant
    is for on its entry (`purchase:12`); `audit_details` add to its audit record's; `user_id`
    is who caused it (the buyer of a purchase)."""
    if source == "subscription":
        raise SubscriptionCreditsByRefreshOnly()
    if source == "transfer":
        raise TransferCreditsByTransferOnly()
    if expires_at is not None and expires_at <= now:
        raise ExpiryNotInFuture()
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    state.write_off_overdue(now)
    grant_id = _new_grant(
        sql,
        state,
        source=source,
        amount=amount,
        entry_type="grant",
        now=now,
        expires_at=expires_at,
        reason=reason,
    )
    result = _persist(
        sql,
        state,
        action="grant",
        context=context,
        now=now,
        reference=reference,
        user_id=user_id,
        details={
            **(audit_details or {}),
            "grant_id": str(grant_id),
            "source": source,
            "reason": reason,
            "amount": format_credits(amount),
        },
    )
    return GrantResult(grant_id, True, result)


@_counted("claw_back")
def claw_back(
    session: DbSession,
    *,
    account_id: int,
    up_to: int,
    reason: str,
    reference: str,
    context: AuditContext,
    now: datetime,
    audit_details: dict[str, str] | None = None,
    user_id: int | None = None,
    grant_id: int | None = None,
) -> int:
    """Take back up to `up_to` (credits paid for and then refunded or disputed) from what is
    available: never below zero, never what open holds reserved. `grant_id`, the purchase's
    grant, is drawn first: a refund takes back what it paid for, not the credits soonest to
    expire (which would turn expiring credits into lasting ones). Returns what was taken (an
    `adjust` entry naming `user_id`, the buyer); the rest is the caller's to record as a
    shortfall. Audited either way."""
    if up_to <= 0:
        raise AmountNotPositive("What is taken back must be positive.")
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    state.write_off_overdue(now)
    taken = min(up_to, state.available)
    if taken:
        state.draw(taken, "adjust", now, first_grant_id=grant_id)
    _persist(
        sql,
        state,
        action="claw_back",
        context=context,
        now=now,
        reference=reference,
        user_id=user_id,
        details={
            **(audit_details or {}),
            "reason": reason,
            "asked": format_credits(up_to),
            "taken": format_credits(taken),
        },
    )
    return taken


def clawed_back_from(
    session: DbSession, *, account_id: int, reference: str
) -> list[tuple[int, datetime | None]]:
    """What the claw-backs of `reference` took, per grant drawn, newest first: the amount and
    when that grant expires (None: never), so that what is given back keeps its expiry."""
    rows = LedgerSql(session).all(CLAWED_BACK, account=account_id, reference=reference)
    return [(int(amount), read_time(expires_at)) for amount, expires_at in rows]


@dataclass(frozen=True)
class TransferResult:
    """Both sides of a transfer after it: the account credits left and the one they reached."""

    source: Balance
    destination: Balance


@_counted("transfer")
def transfer(
    session: DbSession,
    *,
    from_account: int,
    to_account: int,
    amount: int,
    user_id: int,
    references: tuple[str, str],
    context: AuditContext,
    now: datetime,
) -> TransferResult:
    """Move `amount` of what is available in one account to another (a member's credits to
    their team), as one operation: `transfer_out` entries draw the source's grants in draw
    order, and each part arrives as a `transfer` grant with the same expiry (`transfer_in`), so
    that moving credits never makes them last longer. Each side has its audit record; both
    entries name `user_id`. `references` are what the source's and the destination's entries
    say the transfer was for."""
    if amount <= 0:
        raise AmountNotPositive("A transfer's amount must be positive.")
    if from_account == to_account:
        raise TransferToSameAccount()
    sql = LedgerSql(session)
    # Both rows locked in one order, whichever way credits move: no deadlock between two.
    first, second = sorted((from_account, to_account))
    loaded = {first: _load(sql, first), second: _load(sql, second)}
    source, destination = loaded[from_account], loaded[to_account]
    source.write_off_overdue(now)
    destination.write_off_overdue(now)
    if source.available < amount:
        raise InsufficientCredits(required=amount, available=source.available)
    drawn_from = len(source.pending)
    source.draw(amount, "transfer_out", now)
    expiries = {live_grant.id: live_grant.expires_at for live_grant in source.grants}
    arriving: dict[datetime | None, int] = defaultdict(int)
    for drawn in source.pending[drawn_from:]:
        arriving[expiries[drawn.grant_id]] -= drawn.amount
    out_reference, in_reference = references
    details = {"amount": format_credits(amount), "user_id": str(user_id)}
    source_after = _persist(
        sql,
        source,
        action="transfer_out",
        context=context,
        now=now,
        reference=out_reference,
        user_id=user_id,
        details={**details, "to_account": str(to_account)},
    )
    for expires_at, part in arriving.items():
        _new_grant(
            sql,
            destination,
            source="transfer",
            amount=part,
            entry_type="transfer_in",
            now=now,
            expires_at=expires_at,
            reason=in_reference,
        )
    destination_after = _persist(
        sql,
        destination,
        action="transfer_in",
        context=context,
        now=now,
        reference=in_reference,
        user_id=user_id,
        details={**details, "from_account": str(from_account)},
    )
    return TransferResult(source_after, destination_after)


@_counted("adjust")
def adjust(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    reason: str,
    context: AuditContext,
    now: datetime,
) -> Balance:
    """Correct a balance: a positive amount adds an admin grant, a negative one draws the
    available credits (never below zero, never what open holds reserved)."""
    if amount == 0:
        raise ZeroAdjustment()
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    state.write_off_overdue(now)
    details: dict[str, Any] = {"reason": reason, "amount": format_credits(amount)}
    if amount > 0:
        details["grant_id"] = str(
            _new_grant(
                sql,
                state,
                source="admin",
                amount=amount,
                entry_type="adjust",
                now=now,
                reason=reason,
            )
        )
    else:
        if -amount > state.available:
            raise BalanceWouldGoNegative(requested=-amount, available=state.available)
        state.draw(-amount, "adjust", now)
    return _persist(sql, state, action="adjust", context=context, now=now, details=details)


@_counted("refund")
def refund(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    reason: str,
    reference: str,
    context: AuditContext,
    now: datetime,
    user_id: int | None = None,
) -> GrantResult:
    """Give back a charge as a new never-expiring `admin` grant (a `refund` entry), naming
    `user_id`, who made the call refunded.

    The credits charged may have come from grants that expire or have expired since; a refund
    returns their value, not their expiry.
    """
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    state.write_off_overdue(now)
    grant_id = _new_grant(
        sql, state, source="admin", amount=amount, entry_type="refund", now=now, reason=reason
    )
    result = _persist(
        sql,
        state,
        action="refund",
        context=context,
        now=now,
        reference=reference,
        user_id=user_id,
        details={"grant_id": str(grant_id), "reason": reason, "amount": format_credits(amount)},
    )
    return GrantResult(grant_id, True, result)


@_counted("refresh")
def refresh(
    session: DbSession,
    *,
    account_id: int,
    period: str,
    amount: int,
    expires_at: datetime,
    context: AuditContext,
    now: datetime,
) -> GrantResult:
    """Start a subscription period: expire what is left of earlier subscription grants and
    grant this period's credits. Exactly once per account and period (also a unique key)."""
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    existing = sql.one(PERIOD_GRANT, account=account_id, period=period)
    if existing is not None:
        return GrantResult(int(existing[0]), False, Balance(state.balance, state.reserved))
    later = sql.one(LATER_PERIOD_GRANT, account=account_id, end=sql.time(expires_at))
    if later is not None:
        # A later period is granted already (a run as of a later time got here first): this
        # period is over, and ending the later one's credits would leave the user without.
        return GrantResult(int(later[0]), False, Balance(state.balance, state.reserved))
    # Earlier periods' subscription credits end now, as if they had expired.
    for live_grant in state.grants:
        if live_grant.source == "subscription" and (
            live_grant.expires_at is None or live_grant.expires_at > now
        ):
            live_grant.expires_at = now
    state.write_off_overdue(now)
    grant_id = _new_grant(
        sql,
        state,
        source="subscription",
        amount=amount,
        entry_type="refresh",
        now=now,
        expires_at=expires_at,
        period=period,
    )
    result = _persist(
        sql,
        state,
        action="refresh",
        context=context,
        now=now,
        details={"grant_id": str(grant_id), "period": period, "amount": format_credits(amount)},
    )
    return GrantResult(grant_id, True, result)


@_counted("expire_grants")
def expire_grants(
    session: DbSession, *, account_id: int, context: AuditContext, now: datetime
) -> int:
    """Write off expired remainders now (also done by every other operation on the account);
    returns the micro-credits written off."""
    sql = LedgerSql(session)
    state = _load(sql, account_id)
    state.write_off_overdue(now)
    written_off = -sum(pending.amount for pending in state.pending)
    if written_off:
        _persist(sql, state, action="expire_grants", context=context, now=now)
    return written_off


def accounts_with_expired_credits(
    session: DbSession, *, now: datetime, after: int, limit: int
) -> list[int]:
    """Accounts above `after` (by id) holding a grant past its expiry with credits left."""
    sql = LedgerSql(session)
    rows = sql.all(EXPIRED_CREDIT_ACCOUNTS, now=sql.time(now), after=after, limit=limit)
    return [int(row[0]) for row in rows]


# Tries of a hold whose cap changed between its reservation and its reading.
HOLD_TRIES = 3


@_counted("hold")
def hold(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    ttl: timedelta,
    context: AuditContext,
    now: datetime,
    reference: str | None = None,
    caps: tuple[int, ...] = (),
    spender: int | None = None,
) -> HoldResult:
    """Reserve `amount` for a spend in flight, or raise InsufficientCredits; and in each of
    `caps` (`creditapp.ledger.caps`), or raise the refused cap's error. `spender` is the user
    who spends (a team's member): the entries of the hold's resolution name them."""
    try_hold = partial(
        _hold,
        session,
        account_id=account_id,
        amount=amount,
        ttl=ttl,
        context=context,
        now=now,
        reference=reference,
        caps=caps,
        spender=spender,
    )
    for _ in range(HOLD_TRIES - 1):
        try:
            return try_hold()
        except CapChangedMeanwhile:
            continue  # the refusal's savepoint undid the try: nothing is reserved twice
    return try_hold()


def _hold(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    ttl: timedelta,
    context: AuditContext,
    now: datetime,
    reference: str | None,
    caps: tuple[int, ...],
    spender: int | None,
) -> HoldResult:
    if amount <= 0:
        raise AmountNotPositive("A hold's amount must be positive.")
    sql = LedgerSql(session)
    expires_at = now + ttl
    details = {"amount": format_credits(amount), "expires_at": expires_at.isoformat()}
    # What is written before the hold knows it is refused (sent together, for one round trip)
    # is undone if it is: a refused hold has written nothing.
    with _refusable(sql):
        # The common case is one conditional UPDATE of each cap and of the account, and the
        # hold's row, sent together: no lock is taken before them, and no account row means
        # "not enough available" or "an expired grant must be written off first" (the hold's
        # row is then kept for the slow path below, or undone with the refusal).
        *reserved_in_caps, reserved_rows, hold_rows = sql.together(
            *spend_caps.reserving(sql, caps=caps, amount=amount, now=now),
            (RESERVE, {"account": account_id, "amount": amount, "now": sql.time(now)}),
            (
                INSERT_HOLD,
                {
                    "account": account_id,
                    "amount": amount,
                    "reference": reference,
                    "expires_at": sql.time(expires_at),
                    "now": sql.time(now),
                    "capped": bool(caps),
                    "user": spender,
                },
            ),
        )
        spend_caps.refuse_unreserved(
            sql, caps=caps, reserved=reserved_in_caps, amount=amount, now=now
        )
        hold_id = int(hold_rows[0][0])
        spend_caps.link(sql, hold_id=hold_id, caps=caps)
        if reserved_rows:
            balance_after, reserved_after, watched = reserved_rows[0]
            after = Balance(balance_after, reserved_after)
            _audit(
                sql,
                account_id=account_id,
                action="hold",
                context=context,
                now=now,
                before=Balance(after.balance, after.reserved - amount),
                after=after,
                details={**details, **_links(hold_id, reference)},
            )
            if watched:
                alerts.available_moved(
                    sql,
                    account_id=account_id,
                    before=after.available + amount,
                    after=after.available,
                    now=now,
                )
            return HoldResult(hold_id, amount, expires_at, after)

        state = _load(sql, account_id)
        state.write_off_overdue(now)
        if state.available < amount:
            raise InsufficientCredits(required=amount, available=state.available)
        state.reserved += amount
        result = _persist(
            sql,
            state,
            action="hold",
            context=context,
            now=now,
            hold_id=hold_id,
            reference=reference,
            details=details,
        )
        return HoldResult(hold_id, amount, expires_at, result)


@contextmanager
def _refusable(sql: LedgerSql) -> Iterator[None]:
    """Undo what the block wrote if it raises a domain error (a refusal), as if it had never
    run; the statements cost no round trip of their own (`LedgerSql.run`)."""
    sql.run(REFUSABLE)
    try:
        yield
    except CreditAppError:
        sql.run(REFUSED)
        raise
    sql.run(NOT_REFUSED)


def _resolve(
    session: DbSession,
    *,
    hold_id: int,
    status: str,
    actual: int,
    context: AuditContext,
    now: datetime,
) -> Resolution:
    sql = LedgerSql(session)
    # The conditional UPDATE decides who resolves the hold, before the account is locked: a
    # concurrent twin waits for this row, then finds it resolved and returns our outcome.
    # In the same round trip, a hold without caps has its account locked and read, and a
    # capped one charged within its amount has its charge counted in its caps first, then the
    # same (a resolution the statements do not cover locks its account below).
    resolution = {"hold": hold_id, "actual": actual, "resolution": secrets.token_hex(8)}
    resolved_rows, counted_cap_rows, account_rows, grant_rows = sql.together(
        (RESOLVE_HOLD, {**resolution, "status": status, "now": sql.time(now)}),
        spend_caps.counting_resolved(sql, resolution=resolution, now=now),
        (LOCK_RESOLVED_HOLDS_ACCOUNT, resolution),
        (RESOLVED_HOLDS_LIVE_GRANTS, resolution),
    )
    resolved = resolved_rows[0] if resolved_rows else None
    late = False
    if resolved is None and status == "settled":
        resolved = sql.one(SETTLE_EXPIRED_HOLD, hold=hold_id, now=sql.time(now))
        late = resolved is not None
    if resolved is None:
        return _unresolved(sql, hold_id)
    account_id, hold_amount, reference, capped, spender = resolved[:5]  # (then RESOLVE_HOLD's
    released = 0 if late else hold_amount  # `created_at` and mark)

    # The caps before the account, as a hold takes them. A live hold settled within its amount
    # captures exactly `actual` (the account has it: the hold reserved it), so it was counted
    # in its caps with the resolution, and its account locked after them. Any other capped
    # resolution locks its caps and reads their room first, then counts what it captured once
    # the account is known.
    counted_now = bool(account_rows) and capped
    period_began = spend_caps.period_began(counted_cap_rows, now=now)
    most: int | None = None
    if account_rows:
        state = _state_of(sql, account_id, account_rows, grant_rows)
    else:
        caps_first = [spend_caps.room(sql, hold_id=hold_id, now=now)] if capped else []
        *room_rows, account_rows, grant_rows = sql.together(
            *caps_first,
            (LOCK_ACCOUNT, {"account": account_id}),
            (LIVE_GRANTS, {"account": account_id}),
        )
        state = _state_of(sql, account_id, account_rows, grant_rows)
        if capped:
            most = spend_caps.most_capturable(room_rows[0], released=released)

    # A live hold still claims what it reserved (it draws below); a late one reserved nothing.
    placed = None if late else _placed_at(resolved[5])
    state.write_off_overdue(now, resolving=None if placed is None else (placed, hold_amount))
    if not late:
        state.reserved -= hold_amount
    # A charge is capped at what the account can pay (above the hold, or at all once the hold
    # expired), and at what the hold's spending caps allow; the rest is uncollected.
    captured = min(actual, state.available)
    if most is not None:
        captured = min(captured, most)
    if captured:
        # A live hold may spend what expired after it was placed (it reserved those credits);
        # a late settle reserved none. What it may not draw (expired credits other holds
        # claim) is within what they reserve, so what is available is there to draw.
        state.draw(captured, "charge", now, held_since=placed)
    # What the hold kept of expired grants is no longer needed.
    state.write_off_overdue(now)
    if late or captured != min(actual, hold_amount):
        sql.run(RECORD_CAPTURE, hold=hold_id, captured=captured, uncollected=actual - captured)
    if capped and not counted_now:
        counted = spend_caps.resolve(
            sql, hold_id=hold_id, released=released, captured=captured, now=now
        )
        period_began = spend_caps.period_began(counted, now=now)
    if period_began is not None:
        sql.run(DATE_RESOLUTION, hold=hold_id, at=sql.time(period_began))
    after = _persist(
        sql,
        state,
        action={"settled": "settle", "voided": "void", "expired": "expire_hold"}[status],
        context=context,
        now=now,
        hold_id=hold_id,
        reference=reference,
        user_id=spender,
        details={
            "hold_amount": format_credits(hold_amount),
            "actual": format_credits(actual),
            "captured": format_credits(captured),
            **({"late": True} if late else {}),
        },
    )
    return Resolution(
        hold_id, status, captured, actual - captured, applied=True, late=late, balance=after
    )


def _unresolved(sql: LedgerSql, hold_id: int) -> Resolution:
    """Why a hold was not resolved now: it does not exist, has not expired, or was resolved."""
    row = sql.one(HOLD_STATE, hold=hold_id)
    if row is None:
        raise NotFound("No such hold.")
    status, captured, uncollected = row
    if status == "pending":
        raise HoldNotExpired()
    return Resolution(hold_id, status, captured, uncollected, applied=False)


@_counted("settle")
def settle(
    session: DbSession, *, hold_id: int, actual: int, context: AuditContext, now: datetime
) -> Resolution:
    """Charge `actual` against the hold and release the rest (exactly once).

    A settle that arrives after the expiry job released its hold still charges `actual`, from
    what is available now, the shortfall recorded as uncollected: a late answer is never free.
    """
    if actual < 0:
        raise NegativeCharge()
    return _resolve(
        session, hold_id=hold_id, status="settled", actual=actual, context=context, now=now
    )


@_counted("void")
def void(session: DbSession, *, hold_id: int, context: AuditContext, now: datetime) -> Resolution:
    """Release the whole hold, charging nothing (exactly once)."""
    return _resolve(session, hold_id=hold_id, status="voided", actual=0, context=context, now=now)


@_counted("expire_hold")
def expire_hold(
    session: DbSession, *, hold_id: int, context: AuditContext, now: datetime
) -> Resolution:
    """Void a hold whose time ran out (a request that never came back)."""
    return _resolve(session, hold_id=hold_id, status="expired", actual=0, context=context, now=now)


def overdue_hold_ids(session: DbSession, *, now: datetime, limit: int = 500) -> list[int]:
    """Pending holds past their expiry, oldest first."""
    sql = LedgerSql(session)
    return [int(row[0]) for row in sql.all(OVERDUE_HOLDS, now=sql.time(now), limit=limit)]


def balance(session: DbSession, *, account_id: int, now: datetime) -> Balance:
    """The account as of `now`, expired credits excluded even before they are written off."""
    sql = LedgerSql(session)
    row = sql.one(BALANCE_AS_OF, account=account_id, now=sql.time(now))
    if row is None:
        raise NotFound("No such account.")
    current, reserved, overdue_total = row
    if not overdue_total:
        return Balance(current, reserved)
    # As the next operation would write it off: what open holds claim stays until they resolve.
    state = _load(sql, account_id, lock=False)
    state.write_off_overdue(now)  # in memory only: nothing is persisted
    return Balance(state.balance, state.reserved)


@dataclass(frozen=True)
class GrantStanding:
    """A grant as a client sees it at a moment: an expired grant is never spendable, so its
    `remaining` is only what open holds placed before its expiry still need."""

    id: int
    source: str
    amount: int
    remaining: int
    expires_at: datetime | None
    period: str | None
    reason: str | None
    created_at: datetime
    status: str  # active | expired | used_up


def grant_standings(
    session: DbSession, *, account_id: int, grants: list[Grant], now: datetime
) -> list[GrantStanding]:
    """How the account's `grants` stand at `now`, as if expired remainders were written off."""
    sql = LedgerSql(session)
    state = _load(sql, account_id, lock=False)
    state.write_off_overdue(now)  # in memory only: nothing is persisted
    remaining_now = {live_grant.id: live_grant.remaining for live_grant in state.grants}
    standings = []
    for row in grants:
        remaining = remaining_now.get(row.id, 0)
        if row.expires_at is not None and row.expires_at <= now:
            status = "expired"
        elif remaining == 0:
            status = "used_up"
        else:
            status = "active"
        standings.append(
            GrantStanding(
                id=row.id,
                source=row.source,
                amount=row.amount,
                remaining=remaining,
                expires_at=row.expires_at,
                period=row.period,
                reason=row.reason,
                created_at=row.created_at,
                status=status,
            )
        )
    return standings
