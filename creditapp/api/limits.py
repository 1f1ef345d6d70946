"""Rate limits by kind of operation (contract section 4), read from the settings per request."""

from __future__ import annotations

from flask import current_app


def sensitive() -> str:
    """Admin mutations and sign-in."""
    return str(current_app.config["RATELIMIT_SENSITIVE"])


def spending() -> str:
    """Operations that spend credits."""
    return str(current_app.config["RATELIMIT_SPENDING"])
