"""Rate limits (contract section 4): who a request counts against, and the limits by kind of
operation, read from the settings per request."""

from __future__ import annotations

from flask import current_app, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter import Limiter
from jwt.exceptions import PyJWTError


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


limiter = Limiter(key_func=rate_limit_key)


def sensitive() -> str:
    """Admin mutations and sign-in."""
    return str(current_app.config["RATELIMIT_SENSITIVE"])


def spending() -> str:
    """Operations that spend credits."""
    return str(current_app.config["RATELIMIT_SPENDING"])
