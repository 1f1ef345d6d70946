"""Sign-in sessions: every token is issued from one, and revoking the session refuses them all.

A session keeps the id (`jti`) of the one refresh token that may still be used. Refreshing
rotates it with a conditional update; presenting a refresh token that was already rotated away
means a copy is in someone else's hands, so the whole session is revoked. One exception: the
token rotated away last, presented again within a short grace (two tabs refreshing at once, a
retry after a lost answer), gets the pair its first presentation got, reissued from what the
session keeps (no token is stored). PostgreSQL (or the SQLite file) is the record of
revocation: every process sees it at once, and it survives any cache or Redis restart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, true, update

from creditapp.auth import users
from creditapp.auth.models import AuthSession, User
from creditapp.database import DbSession
from creditapp.ledger import AuditContext, record_action
from creditapp.ledger.sql import LedgerSql, Statement, columns_of


def new_jti() -> str:
    return secrets.token_hex(16)


def start(session: DbSession, *, user: User, now: datetime) -> AuthSession:
    """A new session for the user (the caller's transaction)."""
    started = AuthSession(user_id=user.id, refresh_jti=new_jti(), created_at=now)
    session.add(started)
    session.flush()
    return started


@dataclass(frozen=True)
class Rotation:
    """The session's refresh token after a rotation, and when the rotation issued it."""

    refresh_jti: str
    issued_at: datetime


def rotate(
    session: DbSession,
    *,
    user_id: int,
    session_id: int,
    presented_jti: str,
    now: datetime,
    reuse_grace: timedelta,
    context: AuditContext,
) -> Rotation | None:
    """Replace the session's refresh token and return the new one. The token rotated away last,
    presented again within `reuse_grace` of its rotation, returns that same rotation. Any other
    refresh token that is not the current one (a rotated-away copy) revokes the session
    (audited, as `context`): None."""
    rotation = Rotation(refresh_jti=new_jti(), issued_at=now)
    rotated = session.execute(
        update(AuthSession)
        .where(
            AuthSession.id == session_id,
            AuthSession.refresh_jti == presented_jti,
            AuthSession.revoked_at.is_(None),
        )
        .values(
            refresh_jti=rotation.refresh_jti,
            previous_refresh_jti=presented_jti,
            rotated_at=rotation.issued_at,
        )
    )
    if rotated.rowcount == 1:  # type: ignore[attr-defined]
        return rotation
    # A rotation that raced this one holds the row until it commits (PostgreSQL's row lock,
    # SQLite's write lock), so this reads it committed.
    just_rotated = session.execute(
        select(AuthSession.refresh_jti, AuthSession.rotated_at).where(
            AuthSession.id == session_id,
            AuthSession.previous_refresh_jti == presented_jti,
            AuthSession.rotated_at > now - reuse_grace,
            AuthSession.revoked_at.is_(None),
        )
    ).one_or_none()
    if just_rotated is not None:
        return Rotation(refresh_jti=just_rotated.refresh_jti, issued_at=just_rotated.rotated_at)
    revoke(
        session,
        user_id=user_id,
        session_id=session_id,
        reason="refresh_reused",
        context=context,
        now=now,
    )
    return None


def revoke(
    session: DbSession,
    *,
    user_id: int,
    session_id: int,
    reason: str,
    context: AuditContext,
    now: datetime,
) -> int:
    """Revoke one session of the user (a sign-out, a reused refresh token), audited as
    `sessions_revoked`; returns 1 if it was live, else 0."""
    return _revoke_audited(
        session,
        AuthSession.id == session_id,
        user_id=user_id,
        reason=reason,
        context=context,
        now=now,
    )


def revoke_all(
    session: DbSession, *, user_id: int, reason: str, context: AuditContext, now: datetime
) -> int:
    """Sign the user out everywhere (the user, an admin through the API or the CLI), audited as
    `sessions_revoked`; returns how many sessions were live."""
    return _revoke_audited(
        session, true(), user_id=user_id, reason=reason, context=context, now=now
    )


def _revoke_audited(
    session: DbSession,
    which: ColumnElement[bool],
    *,
    user_id: int,
    reason: str,
    context: AuditContext,
    now: datetime,
) -> int:
    """Every session of the user is revoked by one of these, and each revocation is audited:
    tokens refused from a moment on are explained by who refused them, and why."""
    revoked = session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, which, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    count = int(revoked.rowcount)  # type: ignore[attr-defined]
    record_action(
        session,
        action="sessions_revoked",
        context=context,
        now=now,
        account_id=users.personal_account_id(session, user_id),
        details={"revoked_sessions": count, "reason": reason},
    )
    return count


_USER_OF_LIVE_SESSION = Statement(
    f"SELECT {columns_of(User, 'u')} FROM users u JOIN auth_sessions s ON s.user_id = u.id"
    " WHERE u.id = :user AND s.id = :session AND s.revoked_at IS NULL"
)


def user_of_live_session(session: DbSession, *, user_id: int, session_id: int) -> User | None:
    """The user, if this session of theirs is live: one query, the request's only user lookup
    (plain SQL: `LedgerSql.instances`)."""
    found = LedgerSql(session).instances(
        _USER_OF_LIVE_SESSION, (User,), user=user_id, session=session_id
    )
    return None if found is None else found[0]


def is_revoked(session: DbSession, *, session_id: int) -> bool:
    """Whether the session exists and was revoked (why a token was refused)."""
    revoked_at = session.scalar(select(AuthSession.revoked_at).where(AuthSession.id == session_id))
    return revoked_at is not None
