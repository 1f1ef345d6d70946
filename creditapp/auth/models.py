"""Tables of users, their sign-in sessions and subscription tiers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

USER, ADMIN = "user", "admin"
ROLES = (USER, ADMIN)


class Tier(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tiers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    monthly_credits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    allowed_models: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    default_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    max_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    rate_limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        CheckConstraint("monthly_credits >= 0", name="monthly_credits_not_negative"),
        CheckConstraint(
            "default_max_tokens > 0 AND max_max_tokens >= default_max_tokens",
            name="max_tokens_ordered",
        ),
    )


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    # Google's stable id of the person ("sub" of their ID tokens), once they signed in with it.
    google_sub: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default=USER)
    tier_name: Mapped[str] = mapped_column(String(64), ForeignKey("tiers.name"), nullable=False)
    # Subscription periods are calendar months counted from this moment.
    period_anchor: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    __table_args__ = (
        CheckConstraint(one_of("role", ROLES), name="role_known"),
        CheckConstraint("email = lower(email)", name="email_lowercase"),
    )


class AuthSession(db.Model):  # type: ignore[name-defined,misc]
    """One sign-in: every access and refresh token issued from it carries its id (`sid`).
    `refresh_jti` is the one refresh token that may still be used; rotating it is a
    conditional update. A revoked session refuses all of its tokens."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    refresh_jti: Mapped[str] = mapped_column(String(64), nullable=False)
    # The refresh token the last rotation replaced, and when (the issue time of the current
    # one's pair): presented again within the reuse grace, it gets that same pair again.
    previous_refresh_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # logout, logout_all, admin, refresh_reused, cli
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)

    __table_args__ = (Index("ix_auth_sessions_user_id", "user_id"),)


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    """A key for the OpenAI-compatible gateway: it spends from `account_id` (its owner's
    personal account, or a team's) as its owner, within its spending cap (`cap_id`: the key's
    `limit` per `limit_period`, and what it spent). Only the key's SHA-256 `digest` and its
    first characters (`prefix`, to recognise it by) are kept; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    team_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("teams.id"), nullable=True)
    cap_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("spend_caps.id"), nullable=False, unique=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    # "provider/model" or "provider/*"; None: every model the owner's tier allows.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written at most once a minute per key, not on every call.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_api_keys_user_id", "user_id"),)
