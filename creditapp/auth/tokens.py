"""Access and refresh tokens: issuing them from a sign-in session, and which user a verified
token speaks for (only while its session is live).

Authorization reads the role stored on the user, not the token's `role` claim, so demoting an
admin takes effect at once; the claim is there for clients.

A token's claims are input like a request's body: before any of them is used, each must have the
form we issue it in (ids by the wire's id rule, text the databases can store), or the token is
refused with 401, even one signed with our own key.

Rotating the signing key signs no one out: every token names its key in its `kid` header (an id
derived from the key, which tells nothing of it), and while JWT_PREVIOUS_SECRET_KEY is set, a token
naming that key is verified with it. New tokens are always signed with JWT_SECRET_KEY; a refresh
with an old refresh token gets a pair signed with the new key (docs/deploy.md).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token
from flask_jwt_extended.config import config as jwt_settings
from flask_jwt_extended.exceptions import JWTDecodeError

from creditapp.auth import sessions
from creditapp.auth.models import User
from creditapp.config import previous_jwt_secret_key
from creditapp.database import DbSession
from creditapp.extensions import db
from creditapp.ids import parse_id
from creditapp.ledger import AuditContext
from creditapp.text import is_text

# flask-jwt-extended would read a token without `type` as an access token and one without
# `exp` as never expiring; ours always carry all of these.
REQUIRED_CLAIMS = ("exp", "iat", "type", "sub", "sid", "jti")
TOKEN_TYPES = ("access", "refresh")
# As long as the session's `refresh_jti` column.
MAX_JTI_LENGTH = 64
KEY_ID_LENGTH = 16


def key_id(key: str) -> str:
    """The `kid` of tokens signed with `key`: a MAC of a fixed text under the key, so that it
    names the key without telling anything of it."""
    mac = hmac.new(key.encode(), b"creditapp token signing key", hashlib.sha256)
    return mac.hexdigest()[:KEY_ID_LENGTH]


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str


def _issue(
    user: User,
    session_id: int,
    refresh_jti: str,
    *,
    issued_at: datetime,
    access_expires: timedelta | None = None,
) -> Tokens:
    """The pair of tokens of a session's refresh token. Every claim comes from the session and
    `issued_at` (which tokens carry in whole seconds), none from chance, so issuing again from
    the same state gives the same tokens, byte for byte: what a refresh token presented again
    within the reuse grace receives."""
    times = {"iat": issued_at, "nbf": issued_at}
    # Config sets both lifetimes as timedeltas (never False: our tokens always expire).
    access_lifetime = access_expires or cast(timedelta, jwt_settings.access_expires)
    refresh_lifetime = cast(timedelta, jwt_settings.refresh_expires)
    headers = {"kid": key_id(str(jwt_settings.encode_key))}
    return Tokens(
        access_token=create_access_token(
            identity=str(user.id),
            additional_headers=headers,
            additional_claims={
                **times,
                "exp": issued_at + access_lifetime,
                "jti": f"{refresh_jti}.access",
                "role": user.role,
                "sid": session_id,
            },
        ),
        refresh_token=create_refresh_token(
            identity=str(user.id),
            additional_headers=headers,
            additional_claims={
                **times,
                "exp": issued_at + refresh_lifetime,
                "jti": refresh_jti,
                "sid": session_id,
            },
        ),
    )


def sign_in(
    session: DbSession, *, user: User, now: datetime, access_expires: timedelta | None = None
) -> Tokens:
    """Start a session for the user and issue its tokens (the caller's transaction); without
    `access_expires` the access token lives JWT_ACCESS_MINUTES."""
    started = sessions.start(session, user=user, now=now)
    return _issue(
        user,
        started.id,
        started.refresh_jti,
        issued_at=now,
        access_expires=access_expires,
    )


def issue_access_token(
    session: DbSession, user: User, *, now: datetime, expires_in: timedelta | None = None
) -> str:
    """An access token of a new session: what the CLI hands out (the caller's transaction)."""
    return sign_in(session, user=user, now=now, access_expires=expires_in).access_token


def refresh(
    session: DbSession,
    *,
    user: User,
    claims: dict[str, Any],
    now: datetime,
    reuse_grace: timedelta,
    context: AuditContext,
) -> Tokens | None:
    """New tokens for the session of a verified refresh token, whose refresh token rotates. The
    token just rotated away, presented again within `reuse_grace` (a second tab, a retry), gets
    the pair its first presentation got. Presented later, or any older one, it revokes its
    session, audited as `context`: None (the caller commits that, then refuses the request)."""
    rotation = sessions.rotate(
        session,
        user_id=user.id,
        session_id=claims["sid"],
        presented_jti=claims["jti"],
        now=now,
        reuse_grace=reuse_grace,
        context=context,
    )
    if rotation is None:
        return None
    return _issue(user, claims["sid"], rotation.refresh_jti, issued_at=rotation.issued_at)


def _malformed_claim(claims: dict[str, Any]) -> str | None:
    """What is wrong with a token's claims (not yet verified), if any claim is missing or not of
    the form we issue it in."""
    missing = [claim for claim in REQUIRED_CLAIMS if claim not in claims]
    if missing:
        return f"Missing claim: {', '.join(missing)}"
    # JSON numbers that are not integers (1e999 reads as infinity) are no times of ours.
    for claim in ("exp", "iat", "nbf"):
        if claim in claims and type(claims[claim]) is not int:
            return f"The {claim} claim is not a whole number of seconds."
    if parse_id(claims["sub"]) is None:
        return "The sub claim is not a user id."
    # We issue it as a JSON integer (a bool is no integer), within the wire's id rule.
    if type(claims["sid"]) is not int or parse_id(str(claims["sid"])) is None:
        return "The sid claim is not a session id."
    if claims["type"] not in TOKEN_TYPES:
        return "The type claim is neither access nor refresh."
    if not is_text(claims["jti"], max_length=MAX_JTI_LENGTH):
        return "The jti claim is not a token id."
    return None


def _key_for_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The key to verify a token with, once its claims (not yet verified) are all there and of
    our form: every later reader of a verified token may rely on its claims.

    The previous key, while one is set, for a token that names it; else the current key (a
    token issued before tokens named their key names none). Naming a key only chooses which of
    ours checks the signature: a token signed with any other key fails that check."""
    malformed = _malformed_claim(claims)
    if malformed:
        raise JWTDecodeError(malformed)
    previous = previous_jwt_secret_key()
    if previous is not None and header.get("kid") == key_id(previous):
        return previous
    return str(jwt_settings.decode_key)


def _user_of_token(_header: dict[str, Any], claims: dict[str, Any]) -> User | None:
    return sessions.user_of_live_session(
        db.session, user_id=int(claims["sub"]), session_id=claims["sid"]
    )


def was_revoked(claims: dict[str, Any]) -> bool:
    """Why a verified token's user could not be loaded: its session was revoked (else the user
    or session does not exist). Asked only on that failure path."""
    return sessions.is_revoked(db.session, session_id=claims["sid"])


def register_token_rules(jwt: JWTManager) -> None:
    """Require every claim we issue, and make a verified token's user the `current_user`
    while its session is live: one query, folded into the user lookup every request makes."""
    jwt.decode_key_loader(_key_for_token)
    jwt.user_lookup_loader(_user_of_token)
