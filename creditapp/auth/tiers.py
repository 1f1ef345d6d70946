"""Tiers: what a subscription gives (monthly credits, models, token limits, rate limits)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from creditapp import ledger
from creditapp.auth.models import Tier, User
from creditapp.database import DbSession, dialect_of
from creditapp.errors import ValidationFailed
from creditapp.kept import Kept
from creditapp.money import format_credits


@dataclass(frozen=True)
class Terms:
    """What a tier allows a call, as every metered call reads it (kept: `creditapp.kept`), and
    whether it grants credits every period (a call refused for credits may be renewing)."""

    name: str
    allowed_models: tuple[str, ...]
    default_max_tokens: int
    max_max_tokens: int
    rate_limits: dict[str, str]
    grants_credits: bool


_kept_terms: Kept[str, Terms | None] = Kept()


def terms(session: DbSession, name: str) -> Terms | None:
    """The tier's terms, or None if there is no such tier."""

    def load() -> Terms | None:
        tier = session.get(Tier, name)
        if tier is None:
            return None
        return Terms(
            tier.name,
            tuple(tier.allowed_models),
            tier.default_max_tokens,
            tier.max_max_tokens,
            dict(tier.rate_limits or {}),
            tier.monthly_credits > 0,
        )

    return _kept_terms.get(session, name, load)


def rate_limits(session: DbSession, name: str) -> dict[str, str]:
    """The tier's own rate limits by kind (`default`, `spending`, `sensitive`)."""
    found = terms(session, name)
    return {} if found is None else found.rate_limits


def get_all(session: DbSession) -> list[Tier]:
    return list(session.scalars(select(Tier).order_by(Tier.name)))


def put(
    session: DbSession,
    *,
    name: str,
    monthly_credits: int,
    allowed_models: list[str],
    default_max_tokens: int,
    max_max_tokens: int,
    rate_limits: dict[str, str] | None,
    context: ledger.AuditContext,
    now: datetime,
) -> Tier:
    """Create the tier or replace its settings; models and token limits apply to the next
    message. A period has one subscription grant: a new `monthly_credits` changes none made,
    and a period of its users that has none yet (the tier had no credits) gets one."""
    if max_max_tokens < default_max_tokens:
        raise ValidationFailed(details={"max_max_tokens": ["Must be at least default_max_tokens."]})
    settings: dict[str, Any] = {
        "monthly_credits": monthly_credits,
        "allowed_models": sorted(set(allowed_models)),
        "default_max_tokens": default_max_tokens,
        "max_max_tokens": max_max_tokens,
        "rate_limits": rate_limits,
    }
    # Inserted, or else locked and updated: of two admins creating one tier at once, the second
    # updates what the first created (a look first, then an insert, would fail on the key).
    created = (
        session.execute(
            dialect_of(session)
            .insert(Tier)
            .values(name=name, **settings)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Tier.name)
        ).first()
        is not None
    )
    tier = session.get(Tier, name, with_for_update=True, populate_existing=True)
    assert tier is not None
    if not created:
        for key, value in settings.items():
            setattr(tier, key, value)
        session.flush()
    _kept_terms.drop(session, name)
    ledger.record_action(
        session,
        action="tier_created" if created else "tier_updated",
        context=context,
        now=now,
        details={
            "tier": name,
            **settings,
            "monthly_credits": format_credits(monthly_credits),
        },
    )
    return tier


def assign(
    session: DbSession,
    *,
    user: User,
    account_id: int,
    tier_name: str,
    context: ledger.AuditContext,
    now: datetime,
) -> User:
    """Move a user to another tier. Its models and limits apply at once. A period has one
    subscription grant: one already made for this period stays as it is, and the new tier's
    credits come with the next; a period with none yet (the user was on a tier without
    credits) gets the new tier's from the refresh job, or at once on a call refused for
    credits (nothing here grants). The audit record names the user's personal account
    (`account_id`)."""
    if session.get(Tier, tier_name) is None:
        raise ValidationFailed(details={"tier": [f"No tier named {tier_name!r}."]})
    previous = user.tier_name
    user.tier_name = tier_name
    session.flush()
    ledger.record_action(
        session,
        action="tier_assigned",
        context=context,
        now=now,
        account_id=account_id,
        details={"from": previous, "to": tier_name},
    )
    return user
