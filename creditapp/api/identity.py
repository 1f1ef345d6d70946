"""Who is calling: JWT access tokens, the current user, roles and the audit context.

Authorization reads the role stored on the user, not the token's `role` claim, so demoting an
admin takes effect at once; the claim is there for clients.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from flask_jwt_extended import (
    create_access_token,
    current_user,
    decode_token,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError

from creditapp import ledger
from creditapp.api.errors import from_error
from creditapp.auth.models import User
from creditapp.errors import Forbidden, Unauthorized
from creditapp.extensions import db, jwt

F = TypeVar("F", bound=Callable[..., Any])


def issue_access_token(user: User, expires_in: timedelta | None = None) -> str:
    """An access token for the user; without `expires_in`, JWT_ACCESS_TOKEN_EXPIRES applies."""
    return create_access_token(
        identity=str(user.id), additional_claims={"role": user.role}, expires_delta=expires_in
    )


def caller() -> User:
    """The authenticated user of this request (only inside an `authenticated` view)."""
    user: User = current_user
    return user


def authenticated(*, admin: bool = False) -> Callable[[F], F]:
    """Require a valid access token, and the admin role when `admin`."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verify_jwt_in_request()
            if admin and caller().role != "admin":
                raise Forbidden()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def audit_context() -> ledger.AuditContext:
    user = caller()
    return ledger.AuditContext(
        actor_type="admin" if user.role == "admin" else "user",
        actor_id=str(user.id),
        request_id=g.get("request_id"),
        client_ip=request.remote_addr,
    )


def rate_limit_key() -> str:
    """Limits count per user when the request carries a valid token, else per client IP.

    The token's signature and expiry are checked, but the user is not loaded: the view does
    that once, and the limiter runs on every request.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Bearer" and token:
        try:
            return f"user:{decode_token(token)['sub']}"
        except (JWTExtendedException, PyJWTError, KeyError):
            pass
    return f"ip:{request.remote_addr}"


def _load_user(_header: dict[str, Any], payload: dict[str, Any]) -> User | None:
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject.isdigit():
        return None
    return db.session.get(User, int(subject))


def register_identity() -> None:
    """Route every token failure through the contract's error shape."""
    jwt.user_lookup_loader(_load_user)
    jwt.user_lookup_error_loader(
        lambda _h, _p: from_error(Unauthorized("The token's user does not exist."))
    )
    jwt.expired_token_loader(
        lambda _h, _p: from_error(Unauthorized("The access token has expired."))
    )
    jwt.invalid_token_loader(lambda reason: from_error(Unauthorized(f"Invalid token: {reason}")))
    jwt.unauthorized_loader(lambda reason: from_error(Unauthorized(reason)))
    jwt.token_verification_failed_loader(
        lambda _h, _p: from_error(Unauthorized("The token failed verification."))
    )
    jwt.needs_fresh_token_loader(
        lambda _h, _p: from_error(Unauthorized("A fresh token is needed."))
    )
    jwt.revoked_token_loader(lambda _h, _p: from_error(Unauthorized("The token was revoked.")))
