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
from datetime import datetime

from creditapp.database import DbSession
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
        (int(threshold) for threshold, armed in sql.all(
            FLIP_THRESHOLDS, account=account_id, available=after
        ) if not armed),
        reverse=True,
    )
    depleted = before > 0 and after <= 0
    if not crossed and not depleted:
        return
    account = {"account_id": account_id, **outbox.owner(sql, account_id)}
    for threshold in crossed:
        outbox.emit(
            sql,
            account_id=account_id,
            event_type="balance.low",
            data={
                **account,
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
            data={**account, "available": format_credits(after)},
            now=now,
        )


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
    kept = {threshold.amount: threshold.armed for threshold in thresholds(session, account_id=account_id)}
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
