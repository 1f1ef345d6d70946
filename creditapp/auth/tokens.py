"""Access tokens: issuing them, and which user a verified token speaks for.

Authorization reads the role stored on the user, not the token's `role` claim, so demoting an
admin takes effect at once; the claim is there for clients.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask_jwt_extended import JWTManager, create_access_token

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


def register_token_users(jwt: JWTManager) -> None:
    """Make a verified token's user the request's `current_user`."""
    jwt.user_lookup_loader(_user_of_token)
