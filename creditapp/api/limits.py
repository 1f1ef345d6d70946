"""Rate limits (contract section 4): who a request counts against, and the limits by kind of
operation, read from the settings per request."""

from __future__ import annotations

from flask import current_app, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter import Limiter
from jwt.exceptions import PyJWTError
from limits.storage import MemoryStorage


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


def storage_in_use() -> str:
    """Where limits are counted now: `redis`, `memory` (the embedded default), or
    `memory_fallback` while Redis is unreachable, when each process counts on its own (`off`
    when RATELIMIT_ENABLED is false)."""
    if not current_app.config["RATELIMIT_ENABLED"]:
        return "off"
    counting_in_memory = isinstance(limiter.limiter.storage, MemoryStorage)
    if current_app.config["RATELIMIT_STORAGE_URI"].startswith("memory"):
        return "memory"
    return "memory_fallback" if counting_in_memory else "redis"


def sensitive() -> str:
    """Admin mutations and sign-in."""
    return str(current_app.config["RATELIMIT_SENSITIVE"])


def spending() -> str:
    """Operations that spend credits."""
    return str(current_app.config["RATELIMIT_SPENDING"])
