"""Tables of teams: a team owns an account (`accounts.team_id`) that its members spend from,
each within their own spending cap (`team_members.cap_id`, a `spend_caps` row of kind `member`:
a ceiling per UTC day or calendar month, or none, and what the member spent this period)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

TEAM_ROLES = ("owner", "admin", "member")
# The roles that manage a team (its members, their caps); the owner's role is never given.
MANAGING_ROLES = ("owner", "admin")
# A member's cap counts per UTC calendar day or calendar month.
MEMBER_CAP_PERIODS = ("day", "month")


class Team(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class TeamMember(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("teams.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    cap_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("spend_caps.id"), nullable=False, unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("role", TEAM_ROLES), name="role_known"),
        Index("ix_team_members_user_id", "user_id"),
    )
