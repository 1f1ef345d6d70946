"""Users: creation with their account and first subscription grant, look-ups, tier refresh."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select

from creditapp import ledger
from creditapp.auth.models import Tier, User
from creditapp.auth.subscription import period_at
from creditapp.database import DbSession
from creditapp.errors import Conflict, NotFound, ValidationFailed
from creditapp.ledger.models import Account, Grant
from creditapp.text import is_text

DEFAULT_TIER = "free"
# Who `POST /api/auth/demo` signs in as (in demo mode), seeded by `flask demo seed`.
DEMO_USER = "user@demo.creditapp"
DEMO_ADMIN = "admin@demo.creditapp"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def normalize_email(email: str) -> str:
    normalized = email.strip().lower()
    if not is_text(normalized, max_length=320) or not _EMAIL.fullmatch(normalized):
        raise ValidationFailed(details={"email": ["Not a valid email address."]})
    return normalized


def get(session: DbSession, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def personal_account_id(session: DbSession, user_id: int) -> int | None:
    """The user's personal account, for the audit records of what auth does to the user
    (`creditapp.accounts`, which keeps it per process, is a room above this one)."""
    return session.scalar(select(Account.id).where(Account.user_id == user_id))


def find_by_email(session: DbSession, email: str) -> User | None:
    return session.execute(
        select(User).where(User.email == normalize_email(email))
    ).scalar_one_or_none()


def with_email_containing(text: str | None) -> Select[tuple[User]]:
    """Users whose email contains `text` (any case; `%` and `_` match themselves), or all."""
    query = select(User)
    if text:
        query = query.where(User.email.contains(text.lower(), autoescape=True))
    return query


def get_by_email(session: DbSession, email: str) -> User:
    user = find_by_email(session, email)
    if user is None:
        raise NotFound("No such user.")
    return user


def refresh_subscription(
    session: DbSession,
    *,
    user: User,
    account_id: int,
    context: ledger.AuditContext,
    now: datetime,
) -> ledger.GrantResult | None:
    """Grant the tier's credits for the period containing `now` to the user's personal account
    (`account_id`), once per period."""
    tier = session.get(Tier, user.tier_name)
    if tier is None or tier.monthly_credits == 0:
        return None
    period = period_at(user.period_anchor, now)
    return ledger.refresh(
        session,
        account_id=account_id,
        period=period.label,
        amount=tier.monthly_credits,
        expires_at=period.end,
        context=context,
        now=now,
    )


def subscription_due(session: DbSession, *, user: User, account_id: int, now: datetime) -> bool:
    """Whether the user's tier grants credits and their personal account (`account_id`) holds
    no grant yet for the period containing `now`: the refresh job has not come by since the
    period began."""
    tier = session.get(Tier, user.tier_name)
    if tier is None or tier.monthly_credits == 0:
        return False
    period = period_at(user.period_anchor, now)
    granted = select(Grant.id).where(Grant.account_id == account_id, Grant.period == period.label)
    return session.execute(granted).first() is None


def create(
    session: DbSession,
    *,
    email: str,
    context: ledger.AuditContext,
    now: datetime,
    role: str = "user",
    tier_name: str = DEFAULT_TIER,
) -> User:
    """Create a user with their personal account and the first subscription grant of their
    tier."""
    normalized = normalize_email(email)
    if role not in ("user", "admin"):
        raise ValidationFailed(details={"role": ["Must be user or admin."]})
    if session.get(Tier, tier_name) is None:
        raise ValidationFailed(details={"tier": [f"No tier named {tier_name!r}."]})
    if session.execute(select(User.id).where(User.email == normalized)).first():
        raise Conflict("A user with this email exists.")
    user = User(email=normalized, role=role, tier_name=tier_name, period_anchor=now, created_at=now)
    session.add(user)
    session.flush()
    account_id = ledger.open_account(session, user_id=user.id, now=now)
    refresh_subscription(session, user=user, account_id=account_id, context=context, now=now)
    return user


@dataclass(frozen=True)
class CreditSummary:
    account_id: int
    balance: int
    reserved: int
    available: int
    tier: str
    last_credit_refresh: datetime | None
    next_refresh_at: datetime | None


def credit_summary(
    session: DbSession, *, user: User, account_id: int, now: datetime
) -> CreditSummary:
    """What the balance endpoint shows of `account_id` (the account the caller pays from, see
    `creditapp.accounts`) and of the user's subscription: expired credits never count."""
    current = ledger.balance(session, account_id=account_id, now=now)
    last_refresh = session.execute(
        select(func.max(Grant.created_at)).where(
            Grant.account_id == account_id, Grant.source == "subscription"
        )
    ).scalar_one()
    tier = session.get(Tier, user.tier_name)
    renews = tier is not None and tier.monthly_credits > 0
    return CreditSummary(
        account_id=account_id,
        balance=current.balance,
        reserved=current.reserved,
        available=current.available,
        tier=user.tier_name,
        last_credit_refresh=last_refresh,
        next_refresh_at=period_at(user.period_anchor, now).end if renews else None,
    )
