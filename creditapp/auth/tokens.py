"""Access and refresh tokens: issuing them from a sign-in session, and which user a verified
token speaks for (only while its session is live).

Authorization reads the role stored on the user, not the token's `role` claim, so demoting an
admin takes effect at once; the claim is there for clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token
from flask_jwt_extended.config import config as jwt_settings
from flask_jwt_extended.exceptions import JWTDecodeError

from creditapp.auth import sessions
from creditapp.auth.models import User
from creditapp.database import DbSession
from creditapp.extensions import db
from creditapp.ids import parse_id

# flask-jwt-extended would read a token without `type` as an access token and one without
# `exp` as never expiring; ours always carry both, and the session they were issued from.
REQUIRED_CLAIMS = ("exp", "type", "sid")


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str


def _issue(
    user: User, session_id: int, refresh_jti: str, access_expires: timedelta | None
) -> Tokens:
    return Tokens(
        access_token=create_access_token(
            identity=str(user.id),
            additional_claims={"role": user.role, "sid": session_id},
            expires_delta=access_expires,
        ),
        refresh_token=create_refresh_token(
            identity=str(user.id), additional_claims={"sid": session_id, "jti": refresh_jti}
        ),
    )


def sign_in(
    session: DbSession, *, user: User, now: datetime, access_expires: timedelta | None = None
) -> Tokens:
    """Start a session for the user and issue its tokens (the caller's transaction); without
    `access_expires` the access token lives JWT_ACCESS_MINUTES."""
    started = sessions.start(session, user=user, now=now)
    return _issue(user, started.id, started.refresh_jti, access_expires)


def issue_access_token(
    session: DbSession, user: User, *, now: datetime, expires_in: timedelta | None = None
) -> str:
    """An access token of a new session: what the CLI hands out (the caller's transaction)."""
    return sign_in(session, user=user, now=now, access_expires=expires_in).access_token


def refresh(
    session: DbSession, *, user: User, claims: dict[str, Any], now: datetime
) -> Tokens | None:
    """New tokens for the session of a verified refresh token, whose refresh token rotates.
    A refresh token presented after it was rotated away revokes its session: None (the caller
    commits that, then refuses the request)."""
    session_id = int(claims["sid"])
    rotated = sessions.rotate(
        session, session_id=session_id, presented_jti=str(claims["jti"]), now=now
    )
    return None if rotated is None else _issue(user, session_id, rotated, None)


def _key_for_token(_header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The key to verify a token with, once its claims (not yet verified) are all there."""
    missing = [claim for claim in REQUIRED_CLAIMS if claim not in claims]
    if missing:
        raise JWTDecodeError(f"Missing claim: {', '.join(missing)}")
    return str(jwt_settings.decode_key)


def _ids(claims: dict[str, Any]) -> tuple[int, int] | None:
    user_id = parse_id(claims.get("sub"))
    session_id = claims.get("sid")
    if user_id is None or isinstance(session_id, bool) or not isinstance(session_id, int):
        return None
    return user_id, session_id


def _user_of_token(_header: dict[str, Any], claims: dict[str, Any]) -> User | None:
    ids = _ids(claims)
    if ids is None:
        return None
    return sessions.user_of_live_session(db.session, user_id=ids[0], session_id=ids[1])


def was_revoked(claims: dict[str, Any]) -> bool:
    """Why a verified token's user could not be loaded: its session was revoked (else the user
    or session does not exist). Asked only on that failure path."""
    ids = _ids(claims)
    return ids is not None and sessions.is_revoked(db.session, session_id=ids[1])


def register_token_rules(jwt: JWTManager) -> None:
    """Require every claim we issue, and make a verified token's user the `current_user`
    while its session is live: one query, folded into the user lookup every request makes."""
    jwt.decode_key_loader(_key_for_token)
    jwt.user_lookup_loader(_user_of_token)
