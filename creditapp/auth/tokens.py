"""Access tokens: issuing them, and which user a verified token speaks for.

Authorization reads the role stored on the user, not the token's `role` claim, so demoting an
admin takes effect at once; the claim is there for clients.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask_jwt_extended import JWTManager, create_access_token
from flask_jwt_extended.config import config as jwt_settings
from flask_jwt_extended.exceptions import JWTDecodeError

from creditapp.auth.models import User
from creditapp.extensions import db
from creditapp.ids import parse_id


def issue_access_token(user: User, expires_in: timedelta | None = None) -> str:
    """An access token for the user; without `expires_in`, JWT_ACCESS_TOKEN_EXPIRES applies."""
    return create_access_token(
        identity=str(user.id), additional_claims={"role": user.role}, expires_delta=expires_in
    )


def _user_of_token(_header: dict[str, Any], payload: dict[str, Any]) -> User | None:
    user_id = parse_id(payload.get("sub"))
    return None if user_id is None else db.session.get(User, user_id)


# flask-jwt-extended would read a token without `type` as an access token and one without
# `exp` as never expiring; ours always carry both.
REQUIRED_CLAIMS = ("exp", "type")


def _key_for_token(_header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The key to verify a token with, once its claims (not yet verified) are all there."""
    missing = [claim for claim in REQUIRED_CLAIMS if claim not in claims]
    if missing:
        raise JWTDecodeError(f"Missing claim: {', '.join(missing)}")
    return str(jwt_settings.decode_key)


def register_token_rules(jwt: JWTManager) -> None:
    """Require every claim we issue, and make a verified token's user the `current_user`."""
    jwt.decode_key_loader(_key_for_token)
    jwt.user_lookup_loader(_user_of_token)
