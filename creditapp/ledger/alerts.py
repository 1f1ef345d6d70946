"""Low-balance alerts: thresholds on an account's available credits, checked by every ledger
operation that moves them, in its own transaction (under the account's row lock).

A threshold is *armed* until available credits fall strictly below it: that operation emits
one `balance.low` event for it and disarms it; it is armed again once available credits are
strictly above it. Falling to zero from above emits `balance.depleted`. Holds count: available
is balance minus reserved. A threshold set while available is already below it starts
disarmed: setting it is not a crossing, the next fall below it after a rise is.

Only an account someone listens to (`accounts.watched`: it has thresholds or webhook
endpoints) is checked, so the others pay no statement for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from creditapp.database import DbSession, read_time
from creditapp.errors import NotFound, ThresholdsInvalid
from creditapp.ledger import outbox
from creditapp.ledger.sql import LOCK_ACCOUNT, LedgerSql, Statement
from creditapp.money import format_credits

# The thresholds whose state this change of available flips: RETURNING `armed = false` is a
# threshold crossed down (an event), `armed = true` one re-armed.
FLIP_THRESHOLDS = Statement(
    """UPDATE balance_alerts SET armed = (:available > threshold)
       WHERE account_id = :account
         AND ((armed AND :available < threshold) OR (NOT armed AND :available > threshold))
       RETURNING threshold, armed"""
)
THRESHOLDS = Statement(
    "SELECT threshold, armed FROM balance_alerts WHERE account_id = :account ORDER BY threshold"
)
DROP_THRESHOLDS = Statement("DELETE FROM balance_alerts WHERE account_id = :account")
INSERT_THRESHOLD = Statement(
    """INSERT INTO balance_alerts (account_id, threshold, armed, created_at)
       VALUES (:account, :threshold, :armed, :now)"""
)
# Grants of watched accounts expiring within the notice, not signalled yet: marked signalled,
# once (a concurrent run's update finds them marked and skips them).
EXPIRING_GRANTS = Statement(
    """UPDATE grants SET expiry_signalled = true
       WHERE NOT expiry_signalled AND id IN (
           SELECT grants.id FROM grants JOIN accounts ON accounts.id = grants.account_id
           WHERE accounts.watched AND NOT grants.expiry_signalled AND grants.remaining > 0
             AND grants.expires_at > :now AND grants.expires_at <= :soon
           ORDER BY grants.expires_at LIMIT :limit)
       RETURNING id, account_id, source, remaining, expires_at"""
)
WATCH = Statement(
    """UPDATE accounts SET watched =
         EXISTS (SELECT 1 FROM balance_alerts WHERE account_id = :account)
         OR EXISTS (SELECT 1 FROM webhook_endpoints
                    WHERE account_id = :account AND deleted_at IS NULL)
       WHERE id = :account"""
)


MAX_THRESHOLDS = 10


@dataclass(frozen=True)
class Threshold:
    amount: int  # µcr
    armed: bool


def available_moved(
    sql: LedgerSql, *, account_id: int, before: int, after: int, now: datetime
) -> None:
    """Emit the events of available credits moving from `before` to `after` (a watched
    account's operation, in its transaction, its row locked)."""
    if before == after:
        return
    crossed = sorted(
        (
            int(threshold)
            for threshold, armed in sql.all(FLIP_THRESHOLDS, account=account_id, available=after)
            if not armed
        ),
        reverse=True,
    )
    depleted = before > 0 and after <= 0
    for threshold in crossed:
        outbox.emit(
            sql,
            account_id=account_id,
            event_type="balance.low",
            data={
                "threshold": format_credits(threshold),
                "available": format_credits(after),
            },
            now=now,
        )
    if depleted:
        outbox.emit(
            sql,
            account_id=account_id,
            event_type="balance.depleted",
            data={"available": format_credits(after)},
            now=now,
        )


def announce_expiring_grants(
    session: DbSession, *, now: datetime, notice: timedelta, limit: int
) -> int:
    """Emit `grant.expiring` for up to `limit` grants of watched accounts that expire within
    `notice` and still hold credits, once per grant; returns how many (the caller commits)."""
    sql = LedgerSql(session)
    rows = sql.all(EXPIRING_GRANTS, now=sql.time(now), soon=sql.time(now + notice), limit=limit)
    for grant_id, account_id, source, remaining, expires_at in rows:
        expiry = read_time(expires_at)
        assert expiry is not None
        outbox.emit(
            sql,
            account_id=int(account_id),
            event_type="grant.expiring",
            data={
                "grant_id": str(grant_id),
                "source": source,
                "remaining": format_credits(int(remaining)),
                "expires_at": expiry.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
            now=now,
        )
    return len(rows)


def thresholds(session: DbSession, *, account_id: int) -> list[Threshold]:
    """The account's thresholds, lowest first."""
    rows = LedgerSql(session).all(THRESHOLDS, account=account_id)
    return [Threshold(int(amount), bool(armed)) for amount, armed in rows]


def set_thresholds(
    session: DbSession, *, account_id: int, amounts: list[int], now: datetime
) -> list[Threshold]:
    """Replace the account's thresholds by `amounts` (distinct, positive µcr). One kept keeps
    its state (re-setting it never emits again); a new one is armed unless available credits
    are already below it. The account's row is locked, as by a ledger operation, so no
    operation checks a half-written set."""
    if len(set(amounts)) > MAX_THRESHOLDS or any(amount <= 0 for amount in amounts):
        raise ThresholdsInvalid()
    sql = LedgerSql(session)
    account = sql.one(LOCK_ACCOUNT, account=account_id)
    if account is None:
        raise NotFound("No such account.")
    balance, reserved = int(account[0]), int(account[1])
    available = balance - reserved
    kept = {kept.amount: kept.armed for kept in thresholds(session, account_id=account_id)}
    sql.run(DROP_THRESHOLDS, account=account_id)
    rows = [
        {
            "account": account_id,
            "threshold": amount,
            "armed": kept.get(amount, available >= amount),
            "now": sql.time(now),
        }
        for amount in sorted(set(amounts))
    ]
    if rows:
        sql.run_many(INSERT_THRESHOLD, rows)
    watch(sql, account_id=account_id)
    return thresholds(session, account_id=account_id)


def watch(sql: LedgerSql, *, account_id: int) -> None:
    """Mark the account watched while it has thresholds or webhook endpoints (called after
    either changes, in that change's transaction)."""
    sql.run(WATCH, account=account_id)
