"""Subscription refresh: users whose period ended get their tier's credits for the current one.

Exactly once per user and period, however many runs overlap or crash: each user is refreshed
in a transaction of their own, and `ledger.refresh` locks the account and grants a period at
most once (also a unique key). A user who missed several periods gets one grant, for the
period containing `now`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select

from creditapp import accounts, ledger
from creditapp.auth import users
from creditapp.auth.models import Tier, User
from creditapp.database import DbSession, write_transaction
from creditapp.ledger.models import Account, Grant

BATCH = 500


def _due(session: DbSession, *, now: datetime, after_id: int) -> list[tuple[int, int]]:
    """(user id, personal account id) of the users of a paying tier whose personal account holds
    no subscription grant live at `now`
    (subscriptions are a user's: a team's account is never refreshed). One query per batch:
    each user joined to their personal account through the accounts seam's condition."""
    live_subscription = exists().where(
        Grant.account_id == Account.id,
        Grant.source == "subscription",
        Grant.expires_at > now,
    )
    query = (
        select(User.id, Account.id)
        .join(Tier, Tier.name == User.tier_name)
        .join(Account, accounts.owned_by_user(User.id))
        .where(User.id > after_id, Tier.monthly_credits > 0, ~live_subscription)
        .order_by(User.id)
        .limit(BATCH)
    )
    return [(user_id, account_id) for user_id, account_id in session.execute(query)]


def run(session: DbSession, *, now: datetime, context: ledger.AuditContext) -> dict[str, int]:
    granted = checked = 0
    after_id = 0
    while True:
        due = _due(session, now=now, after_id=after_id)
        session.rollback()  # end the read; each user gets a transaction of their own
        if not due:
            break
        for user_id, account_id in due:
            checked += 1
            with write_transaction(session):
                result = users.refresh_subscription(
                    session,
                    user=users.get(session, user_id),
                    account_id=account_id,
                    context=context,
                    now=now,
                )
            granted += bool(result and result.created)
        after_id = due[-1][0]
    return {"checked": checked, "granted": granted}
