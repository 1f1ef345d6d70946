"""Rate limits (contract section 4): who a request counts against, and the limits by kind of
operation: the service-wide settings, or what the caller's tier says instead.

The caller is the request's principal (its `rate_limit_key`): the user of a valid access token
or the owner of a valid API key, loaded once per request (the view reuses it); else the
client's IP. A tier's
`rate_limits` come from a short in-process cache of the tiers, never a query per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request
from flask_limiter import Limiter
from limits.storage import MemoryStorage

from creditapp.api import openapi
from creditapp.api.errors import DATABASE_DOWN
from creditapp.api.identity import request_principal
from creditapp.auth import tiers
from creditapp.auth.principal import Principal
from creditapp.extensions import db

F = TypeVar("F", bound=Callable[..., Any])


def client_ip() -> str:
    return f"ip:{request.remote_addr}"


def _counted_principal() -> Principal | None:
    """The request's principal, or None when there is none or the database cannot say (the
    request is then not counted, see below). A database error must not reach the limiter,
    which would take it for its own storage failing, switch to counting in memory, and ask
    again on a session whose transaction is broken."""
    try:
        return request_principal()
    except DATABASE_DOWN:
        db.session.rollback()
        g.caller_unknown_database_down = True
        return None


def rate_limit_key() -> str:
    """Limits count per caller (`user:<id>` for a valid access token or API key), else per
    IP."""
    who = _counted_principal()
    return client_ip() if who is None else who.rate_limit_key


def _limit(kind: str, setting: str) -> str:
    who = _counted_principal()
    if who is not None and who.user is not None:
        try:
            chosen = tiers.rate_limits(db.session, who.user.tier_name).get(kind)
        except DATABASE_DOWN:
            db.session.rollback()
            chosen = None
        if chosen:
            return str(chosen)
    return str(current_app.config[setting])


def everything() -> str:
    """One budget across every endpoint."""
    return _limit("default", "RATELIMIT_APPLICATION")


def sensitive() -> str:
    """Admin mutations and sign-in."""
    return _limit("sensitive", "RATELIMIT_SENSITIVE")


def demo_sign_in() -> str:
    """How often one IP may use the demo sign-in (DEMO_SIGN_IN_LIMIT; counted per IP, whoever
    signs in)."""
    return str(current_app.config["DEMO_SIGN_IN_LIMIT"])


def spending() -> str:
    """Operations that spend credits."""
    return _limit("spending", "RATELIMIT_SPENDING")


limiter = Limiter(key_func=rate_limit_key, application_limits=[everything])

# One budget per kind of operation, across every endpoint of the kind (contract, section 4): a
# user's chat messages and gateway calls spend the same 30 a minute, an admin's grants, adjusts,
# prices and tiers the same 10 per 5 minutes. Sign-in has the sensitive limit per IP, in a
# budget of its own: an admin's mutation sent with an expired token (refused, and counted per
# IP) must not spend the sign-ins of its address.
spending_operation = limiter.shared_limit(spending, scope="spending")
admin_mutation = limiter.shared_limit(sensitive, scope="sensitive")
sign_in = limiter.shared_limit(sensitive, scope="sign_in", key_func=client_ip)


@limiter.request_filter
def _caller_unknown_database_down() -> bool:
    """Not counted: a request whose caller cannot be loaded because the database is down. Its
    view meets the database itself and answers 503; counted against its IP instead, the
    outage would spend the budget of everyone behind that IP, refused with 429 for the rest of
    the window once the database is back."""
    _counted_principal()
    return bool(g.get("caller_unknown_database_down"))


def exempt(view: F) -> F:
    """No rate limit counts this view (probes, metrics, docs)."""
    return openapi.declare(limiter.exempt(view), rate_limited=False)  # type: ignore[return-value]


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
