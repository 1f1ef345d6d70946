"""Who is calling this request: the authenticated user, the admin check, the audit context, and
every token failure in the contract's error shape. Tokens themselves are `creditapp.auth.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from flask_jwt_extended import JWTManager, current_user, verify_jwt_in_request

from creditapp import ledger
from creditapp.api.errors import from_error
from creditapp.auth.models import User
from creditapp.errors import Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


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
            if admin and not caller().is_admin:
                raise Forbidden()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def audit_context() -> ledger.AuditContext:
    user = caller()
    return ledger.AuditContext(
        actor_type="admin" if user.is_admin else "user",
        actor_id=str(user.id),
        request_id=g.get("request_id"),
        client_ip=request.remote_addr,
    )


def register_token_errors(jwt: JWTManager) -> None:
    """Route every token failure through the contract's error shape."""
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
