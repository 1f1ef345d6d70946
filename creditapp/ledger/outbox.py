"""The outbox: events written in the transaction of the change that caused them.

`emit` inserts the event and one pending delivery for each enabled endpoint of its account
that listens to its type, on the caller's connection and in the caller's transaction: if the
change rolls back, so does its event; once it commits, the delivery job finds the deliveries
however soon after the process dies. Delivery itself (signing, posting, retrying) is
`creditapp.signals.delivery`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from creditapp.ledger.sql import LedgerSql, Statement

INSERT_EVENT = Statement(
    """INSERT INTO webhook_events (account_id, type, data, created_at)
       VALUES (:account, :type, :data, :now) RETURNING id"""
)
# Endpoints list their types comma-separated; `:listens` is `%,<type>,%`.
FAN_OUT = Statement(
    """INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at,
                                      created_at)
       SELECT :event, id, 'pending', 0, :now, :now FROM webhook_endpoints
       WHERE account_id = :account AND enabled AND deleted_at IS NULL
         AND (',' || events || ',') LIKE :listens"""
)
TO_ONE_ENDPOINT = Statement(
    """INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at,
                                      created_at)
       VALUES (:event, :endpoint, 'pending', 0, :now, :now)"""
)
ACCOUNT_OWNER = Statement("SELECT user_id, team_id FROM accounts WHERE id = :account")


def _owner(sql: LedgerSql, account_id: int) -> dict[str, str]:
    """Whose account it is: `{"user_id": n}` or `{"team_id": n}`."""
    row = sql.one(ACCOUNT_OWNER, account=account_id)
    assert row is not None
    user_id, team_id = row
    return {"team_id": str(team_id)} if team_id is not None else {"user_id": str(user_id)}


def emit(
    sql: LedgerSql,
    *,
    account_id: int,
    event_type: str,
    data: dict[str, Any],
    now: datetime,
    endpoint_id: int | None = None,
) -> int:
    """Write an event of `account_id` and its deliveries (to every endpoint listening to its
    type, or only to `endpoint_id`); returns the event's id. Its `data` names the account and
    its owner (`account_id` and `user_id` or `team_id`) before the event's own fields."""
    data = {"account_id": str(account_id), **_owner(sql, account_id), **data}
    row = sql.one(
        INSERT_EVENT, account=account_id, type=event_type, data=sql.json(data), now=sql.time(now)
    )
    assert row is not None
    event_id = int(row[0])
    if endpoint_id is not None:
        sql.run(TO_ONE_ENDPOINT, event=event_id, endpoint=endpoint_id, now=sql.time(now))
    else:
        sql.run(
            FAN_OUT,
            event=event_id,
            account=account_id,
            listens=f"%,{event_type},%",
            now=sql.time(now),
        )
    return event_id
