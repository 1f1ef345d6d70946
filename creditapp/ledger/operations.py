"""Ledger operations: each computes its change on a locked snapshot and persists it in one place.

Every function takes the caller's session and does not commit: the caller wraps the call in
`creditapp.database.write_transaction`, so that the operation, its entries and its audit record
commit together (and, for HTTP requests, together with the stored idempotent response).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, select, update

from creditapp.database import DbSession
from creditapp.errors import BalanceWouldGoNegative, InsufficientCredits, NotFound
from creditapp.ledger.models import GRANT_SOURCES, Account, AuditRecord, Grant, Hold, LedgerEntry
from creditapp.money import format_credits

accounts = Account.__table__
grants = Grant.__table__
holds = Hold.__table__
entries = LedgerEntry.__table__
audit_records = AuditRecord.__table__


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
    """How a hold was resolved. `applied` is true only for the call that resolved it."""

    hold_id: int
    status: str
    captured: int
    uncollected: int
    applied: bool


@dataclass
class _LiveGrant:
    id: int
    remaining: int
    expires_at: datetime | None
    source: str

    def overdue(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


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
    grants: list[_LiveGrant]
    initial_balance: int = 0
    initial_reserved: int = 0
    pending: list[_PendingEntry] = field(default_factory=list)

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

    def write_off_overdue(self, now: datetime) -> None:
        """Write off expired remainders, keeping what open holds still need."""
        writable = self.available
        for live_grant in self.grants:
            if writable <= 0:
                return
            if live_grant.overdue(now) and live_grant.remaining > 0:
                amount = min(live_grant.remaining, writable)
                self.post("expire", live_grant, -amount)
                writable -= amount

    def draw(self, amount: int, entry_type: str, now: datetime, *, include_overdue: bool) -> None:
        """Take `amount` from the grants in draw order. Callers check it is there."""
        left = amount
        for live_grant in self.grants:
            if left == 0:
                break
            if live_grant.remaining == 0 or (live_grant.overdue(now) and not include_overdue):
                continue
            taken = min(live_grant.remaining, left)
            self.post(entry_type, live_grant, -taken)
            left -= taken
        if left:
            raise AssertionError(f"draw of {amount} left {left} undrawn on account {self.id}")


def _lock(session: DbSession, account_id: int) -> _AccountState:
    """Lock the account row (PostgreSQL), then read its live grants in draw order.

    Two statements on purpose: under READ COMMITTED a statement that waited for the row lock
    sees the locked row's newest version but every other row as of its start, so grants read
    in the same statement could be stale. The second statement starts after the lock is ours.
    """
    account = session.execute(
        select(accounts.c.balance, accounts.c.reserved, accounts.c.last_seq)
        .where(accounts.c.id == account_id)
        .with_for_update()
    ).one_or_none()
    if account is None:
        raise NotFound("No such account.")
    live_grants = session.execute(
        select(grants.c.id, grants.c.remaining, grants.c.expires_at, grants.c.source)
        .where(grants.c.account_id == account_id, grants.c.remaining > 0)
        .order_by(grants.c.expires_at.asc().nulls_last(), grants.c.created_at, grants.c.id)
    )
    return _AccountState(
        id=account_id,
        balance=account.balance,
        reserved=account.reserved,
        last_seq=account.last_seq,
        grants=[_LiveGrant(*row) for row in live_grants],
    )


def _links(hold_id: int | None, reference: str | None) -> dict[str, str]:
    links = {"hold_id": str(hold_id)} if hold_id is not None else {}
    return links | ({"reference": reference} if reference is not None else {})


def _audit(
    session: DbSession,
    *,
    account_id: int,
    action: str,
    context: AuditContext,
    now: datetime,
    before: Balance,
    after: Balance,
    details: dict[str, Any],
) -> int:
    return session.execute(
        insert(audit_records)
        .values(
            actor_type=context.actor_type,
            actor_id=context.actor_id,
            action=action,
            account_id=account_id,
            balance_before=before.balance,
            balance_after=after.balance,
            reserved_before=before.reserved,
            reserved_after=after.reserved,
            request_id=context.request_id,
            client_ip=context.client_ip,
            details=details,
            created_at=now,
        )
        .returning(audit_records.c.id)
    ).scalar_one()


def _persist(
    session: DbSession,
    state: _AccountState,
    *,
    action: str,
    context: AuditContext,
    now: datetime,
    hold_id: int | None = None,
    reference: str | None = None,
    details: dict[str, Any] | None = None,
) -> Balance:
    """Write the operation's audit record, its entries, the grants' and the account's new state."""
    audit_id = _audit(
        session,
        account_id=state.id,
        action=action,
        context=context,
        now=now,
        before=Balance(state.initial_balance, state.initial_reserved),
        after=Balance(state.balance, state.reserved),
        details={**(details or {}), **_links(hold_id, reference)},
    )

    seq = state.last_seq or 0
    if state.pending:
        running = state.initial_balance
        rows = []
        grant_changes: dict[int, int] = defaultdict(int)
        for pending in state.pending:
            seq += 1
            rows.append(
                {
                    "account_id": state.id,
                    "seq": seq,
                    "prev_seq": seq - 1 if seq > 1 else None,
                    "type": pending.type,
                    "amount": pending.amount,
                    "balance_before": running,
                    "balance_after": running + pending.amount,
                    "grant_id": pending.grant_id,
                    "hold_id": hold_id,
                    "audit_id": audit_id,
                    "reference": reference,
                    "request_id": context.request_id,
                    "created_at": now,
                }
            )
            running += pending.amount
            grant_changes[pending.grant_id] += pending.amount
        session.execute(insert(entries), rows)
        session.execute(
            update(grants)
            .where(grants.c.id == bindparam("changed_grant"))
            .values(remaining=grants.c.remaining + bindparam("change")),
            [{"changed_grant": gid, "change": change} for gid, change in grant_changes.items()],
        )
    session.execute(
        update(accounts)
        .where(accounts.c.id == state.id)
        .values(balance=state.balance, reserved=state.reserved, last_seq=seq or None)
    )
    state.pending.clear()
    return Balance(state.balance, state.reserved)


def open_account(session: DbSession, *, user_id: int, now: datetime) -> int:
    """Create the user's empty account and return its id."""
    return session.execute(
        insert(accounts)
        .values(user_id=user_id, balance=0, reserved=0, last_seq=None, created_at=now)
        .returning(accounts.c.id)
    ).scalar_one()


def _new_grant(
    session: DbSession,
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
        raise ValueError(f"unknown grant source {source!r}")
    if amount <= 0:
        raise ValueError("a grant's amount must be positive")
    # Inserted empty: the entry below fills it, so the grant's remaining is its entries' sum.
    grant_id = session.execute(
        insert(grants)
        .values(
            account_id=state.id,
            source=source,
            amount=amount,
            remaining=0,
            expires_at=expires_at,
            period=period,
            reason=reason,
            created_at=now,
        )
        .returning(grants.c.id)
    ).scalar_one()
    live_grant = _LiveGrant(grant_id, 0, expires_at, source)
    state.grants.append(live_grant)
    state.post(entry_type, live_grant, amount)
    return grant_id


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
) -> GrantResult:
    """Add credits as a new grant (purchase, promo or admin)."""
    if source == "subscription":
        raise ValueError("subscription credits come only from refresh")
    if expires_at is not None and expires_at <= now:
        raise ValueError("a grant must expire in the future")
    state = _lock(session, account_id)
    state.write_off_overdue(now)
    grant_id = _new_grant(
        session,
        state,
        source=source,
        amount=amount,
        entry_type="grant",
        now=now,
        expires_at=expires_at,
        reason=reason,
    )
    result = _persist(
        session,
        state,
        action="grant",
        context=context,
        now=now,
        details={
            "grant_id": str(grant_id),
            "source": source,
            "reason": reason,
            "amount": format_credits(amount),
        },
    )
    return GrantResult(grant_id, True, result)


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
        raise ValueError("an adjustment must not be zero")
    state = _lock(session, account_id)
    state.write_off_overdue(now)
    details: dict[str, Any] = {"reason": reason, "amount": format_credits(amount)}
    if amount > 0:
        details["grant_id"] = str(
            _new_grant(
                session,
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
        state.draw(-amount, "adjust", now, include_overdue=False)
    return _persist(session, state, action="adjust", context=context, now=now, details=details)


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
    state = _lock(session, account_id)
    existing = session.execute(
        select(grants.c.id).where(grants.c.account_id == account_id, grants.c.period == period)
    ).scalar_one_or_none()
    if existing is not None:
        return GrantResult(existing, False, Balance(state.balance, state.reserved))
    # Earlier periods' subscription credits end now, as if they had expired.
    for live_grant in state.grants:
        if live_grant.source == "subscription" and (
            live_grant.expires_at is None or live_grant.expires_at > now
        ):
            live_grant.expires_at = now
    state.write_off_overdue(now)
    grant_id = _new_grant(
        session,
        state,
        source="subscription",
        amount=amount,
        entry_type="refresh",
        now=now,
        expires_at=expires_at,
        period=period,
    )
    result = _persist(
        session,
        state,
        action="refresh",
        context=context,
        now=now,
        details={"grant_id": str(grant_id), "period": period, "amount": format_credits(amount)},
    )
    return GrantResult(grant_id, True, result)


def expire_grants(
    session: DbSession, *, account_id: int, context: AuditContext, now: datetime
) -> Balance:
    """Write off expired remainders now (also done by every other operation on the account)."""
    state = _lock(session, account_id)
    state.write_off_overdue(now)
    if not state.pending:
        return Balance(state.balance, state.reserved)
    return _persist(session, state, action="expire_grants", context=context, now=now)


def hold(
    session: DbSession,
    *,
    account_id: int,
    amount: int,
    ttl: timedelta,
    context: AuditContext,
    now: datetime,
    reference: str | None = None,
) -> HoldResult:
    """Reserve `amount` for a spend in flight, or raise InsufficientCredits."""
    if amount <= 0:
        raise ValueError("a hold's amount must be positive")
    expires_at = now + ttl
    has_overdue_grant = exists().where(
        grants.c.account_id == accounts.c.id,
        grants.c.remaining > 0,
        grants.c.expires_at <= now,
    )
    # The common case is one conditional UPDATE: no lock is taken before it, and 0 rows means
    # "not enough available" or "an expired grant must be written off first".
    reserved_row = session.execute(
        update(accounts)
        .where(
            accounts.c.id == account_id,
            accounts.c.balance - accounts.c.reserved >= amount,
            ~has_overdue_grant,
        )
        .values(reserved=accounts.c.reserved + amount)
        .returning(accounts.c.balance, accounts.c.reserved)
    ).one_or_none()
    details = {"amount": format_credits(amount), "expires_at": expires_at.isoformat()}
    if reserved_row is not None:
        after = Balance(reserved_row.balance, reserved_row.reserved)
        hold_id = _insert_hold(session, account_id, amount, reference, expires_at, now)
        _audit(
            session,
            account_id=account_id,
            action="hold",
            context=context,
            now=now,
            before=Balance(after.balance, after.reserved - amount),
            after=after,
            details={**details, **_links(hold_id, reference)},
        )
        return HoldResult(hold_id, amount, expires_at, after)

    state = _lock(session, account_id)
    state.write_off_overdue(now)
    if state.available < amount:
        raise InsufficientCredits(required=amount, available=state.available)
    state.reserved += amount
    hold_id = _insert_hold(session, account_id, amount, reference, expires_at, now)
    result = _persist(
        session,
        state,
        action="hold",
        context=context,
        now=now,
        hold_id=hold_id,
        reference=reference,
        details=details,
    )
    return HoldResult(hold_id, amount, expires_at, result)


def _insert_hold(
    session: DbSession,
    account_id: int,
    amount: int,
    reference: str | None,
    expires_at: datetime,
    now: datetime,
) -> int:
    return session.execute(
        insert(holds)
        .values(
            account_id=account_id,
            amount=amount,
            status="pending",
            uncollected=0,
            reference=reference,
            expires_at=expires_at,
            created_at=now,
        )
        .returning(holds.c.id)
    ).scalar_one()


def _stored_resolution(session: DbSession, hold_id: int) -> Resolution:
    row = session.execute(
        select(holds.c.status, holds.c.captured, holds.c.uncollected).where(holds.c.id == hold_id)
    ).one()
    return Resolution(hold_id, row.status, row.captured or 0, row.uncollected, applied=False)


def _resolve(
    session: DbSession,
    *,
    hold_id: int,
    status: str,
    actual: int,
    context: AuditContext,
    now: datetime,
) -> Resolution:
    found = session.execute(
        select(holds.c.account_id, holds.c.amount, holds.c.status, holds.c.expires_at).where(
            holds.c.id == hold_id
        )
    ).one_or_none()
    if found is None:
        raise NotFound("No such hold.")
    if found.status != "pending":
        return _stored_resolution(session, hold_id)
    if status == "expired" and found.expires_at > now:
        raise ValueError("the hold has not expired yet")

    state = _lock(session, found.account_id)
    state.write_off_overdue(now)
    state.reserved -= found.amount
    # Above the hold, a charge is capped at what the account can pay; the rest is uncollected.
    captured = min(actual, state.available)
    if captured:
        state.draw(captured, "charge", now, include_overdue=True)
    # What the hold kept of expired grants is no longer needed.
    state.write_off_overdue(now)
    resolved = session.execute(
        update(holds)
        .where(holds.c.id == hold_id, holds.c.status == "pending")
        .values(status=status, resolved_at=now, captured=captured, uncollected=actual - captured)
        .returning(holds.c.reference)
    ).one_or_none()
    if resolved is None:
        # Another transaction resolved it first: its outcome stands, ours is discarded.
        return _stored_resolution(session, hold_id)
    _persist(
        session,
        state,
        action={"settled": "settle", "voided": "void", "expired": "expire_hold"}[status],
        context=context,
        now=now,
        hold_id=hold_id,
        reference=resolved.reference,
        details={
            "hold_amount": format_credits(found.amount),
            "actual": format_credits(actual),
            "captured": format_credits(captured),
        },
    )
    return Resolution(hold_id, status, captured, actual - captured, applied=True)


def settle(
    session: DbSession, *, hold_id: int, actual: int, context: AuditContext, now: datetime
) -> Resolution:
    """Charge `actual` against the hold and release the rest (exactly once)."""
    if actual < 0:
        raise ValueError("a settled amount cannot be negative")
    return _resolve(
        session, hold_id=hold_id, status="settled", actual=actual, context=context, now=now
    )


def void(session: DbSession, *, hold_id: int, context: AuditContext, now: datetime) -> Resolution:
    """Release the whole hold, charging nothing (exactly once)."""
    return _resolve(session, hold_id=hold_id, status="voided", actual=0, context=context, now=now)


def expire_hold(
    session: DbSession, *, hold_id: int, context: AuditContext, now: datetime
) -> Resolution:
    """Void a hold whose time ran out (a request that never came back)."""
    return _resolve(session, hold_id=hold_id, status="expired", actual=0, context=context, now=now)


def overdue_hold_ids(session: DbSession, *, now: datetime, limit: int = 500) -> list[int]:
    """Pending holds past their expiry, oldest first."""
    return list(
        session.execute(
            select(holds.c.id)
            .where(holds.c.status == "pending", holds.c.expires_at <= now)
            .order_by(holds.c.expires_at)
            .limit(limit)
        ).scalars()
    )


def balance(session: DbSession, *, account_id: int, now: datetime) -> Balance:
    """The account as of `now`, expired credits excluded even before they are written off."""
    overdue = (
        select(grants.c.remaining)
        .where(
            grants.c.account_id == account_id,
            grants.c.remaining > 0,
            grants.c.expires_at <= now,
        )
        .subquery()
    )
    row = session.execute(
        select(
            accounts.c.balance,
            accounts.c.reserved,
            select(func.coalesce(func.sum(overdue.c.remaining), 0)).scalar_subquery(),
        ).where(accounts.c.id == account_id)
    ).one_or_none()
    if row is None:
        raise NotFound("No such account.")
    current, reserved, overdue_total = row
    # Mirrors write_off_overdue: what open holds still need stays until they resolve.
    pending_write_off = min(int(overdue_total), current - reserved)
    return Balance(current - pending_write_off, reserved)
