"""Who is calling this request: the authenticated user, the admin check, the audit context, and
every token failure in the contract's error shape. Tokens themselves are `creditapp.auth.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, g, request
from flask_jwt_extended import (
    JWTManager,
    current_user,
    get_current_user,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError

from creditapp import ledger
from creditapp.api import openapi
from creditapp.api.errors import from_error
from creditapp.api.security import security_event
from creditapp.auth import tokens
from creditapp.auth.models import User
from creditapp.auth.principal import Principal
from creditapp.errors import Forbidden, TokenRevoked, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def caller() -> User:
    """The authenticated user of this request (only inside an `authenticated` view)."""
    user: User = current_user
    return user


def principal() -> Principal:
    """Who is calling this request (only inside an `authenticated` view)."""
    return Principal.signed_in(caller())


def authenticated(*, admin: bool = False) -> Callable[[F], F]:
    """Require a valid access token, and the admin role when `admin`."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _verify_once()
            if admin and not caller().is_admin:
                raise Forbidden()
            return view(*args, **kwargs)

        return openapi.declare(wrapper, security="access_token", admin=admin)  # type: ignore[return-value]

    return decorator


def _verify_once() -> None:
    """Verify the access token and load its user, unless the rate limiter already did so in
    this request (one user lookup per request)."""
    if request_user() is None:
        verify_jwt_in_request()  # refuses the request in the contract's shape


def request_user() -> User | None:
    """The user of this request's valid access token, or None: the token is verified and its
    user loaded once per request, whoever asks first (the rate limiter, then the view)."""
    try:
        user: User | None = get_current_user()
        return user
    except RuntimeError:  # not verified yet in this request
        pass
    try:
        verify_jwt_in_request(optional=True)
    except (JWTExtendedException, PyJWTError):
        return None  # refused by the view, in the contract's shape
    loaded: User | None = get_current_user()
    return loaded


def audit_context() -> ledger.AuditContext:
    user = caller()
    return ledger.AuditContext(
        actor_type="admin" if user.is_admin else "user",
        actor_id=str(user.id),
        request_id=g.get("request_id"),
        client_ip=request.remote_addr,
    )


def _user_not_loaded(_header: dict[str, Any], claims: dict[str, Any]) -> Response:
    if tokens.was_revoked(claims):
        security_event("token_revoked", session_id=claims.get("sid"))
        return from_error(TokenRevoked())
    return from_error(Unauthorized("The token's user or session does not exist."))


def register_token_errors(jwt: JWTManager) -> None:
    """Route every token failure through the contract's error shape."""
    jwt.user_lookup_error_loader(_user_not_loaded)
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
    jwt.revoked_token_loader(lambda _h, _p: from_error(TokenRevoked()))
