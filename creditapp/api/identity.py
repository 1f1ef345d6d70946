"""Who is calling this request: the principal established at the edge (a signed-in user today;
an API key or a verified webhook sender through the same `establish`), the admin check, the
audit context, and every token failure in the error shape chosen for the request. Tokens
themselves are `creditapp.auth.tokens`; what follows from a principal is
`creditapp.auth.principal`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, Response, g, request
from flask_jwt_extended import (
    JWTManager,
    get_current_user,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError

from creditapp import ledger
from creditapp.api import openapi
from creditapp.api.errors import from_error
from creditapp.api.security import security_event
from creditapp.auth import api_keys, tokens
from creditapp.auth.models import ApiKey, User
from creditapp.auth.principal import Principal
from creditapp.database import write_transaction
from creditapp.errors import Forbidden, InvalidApiKey, TokenRevoked, Unauthorized
from creditapp.extensions import db

F = TypeVar("F", bound=Callable[..., Any])
# Where this request's principal is kept (flask.g): set once, by `establish`.
_PRINCIPAL = "creditapp_principal"


def establish(who: Principal) -> Principal:
    """Make `who` this request's principal: the one door every kind of caller comes through
    (`authenticated` for a signed-in user; the API-key and webhook views once they verified
    their caller). A request has one principal: establishing another is a programming error."""
    established: Principal | None = g.get(_PRINCIPAL)
    if established is not None:
        if established.identity != who.identity:
            raise RuntimeError(
                f"this request's principal is {established.identity}, not {who.identity}"
            )
        return established
    setattr(g, _PRINCIPAL, who)
    return who


def established_principal() -> Principal | None:
    """The request's principal if one was established, else None (for logs)."""
    established: Principal | None = g.get(_PRINCIPAL)
    return established


def principal() -> Principal:
    """Who is calling this request (only once established: inside an `authenticated` view, or
    after a door's `establish`)."""
    established: Principal | None = g.get(_PRINCIPAL)
    if established is None:
        raise RuntimeError("no principal was established for this request")
    return established


def caller() -> User:
    """The principal's user: the signed-in user, or an API key's owner. A view that verifies a
    token of another kind itself (the refresh token) gets that token's user."""
    established: Principal | None = g.get(_PRINCIPAL)
    if established is None:
        user: User = get_current_user()
        return user
    if established.user is None:
        raise RuntimeError(f"{established.identity} acts for no user")
    return established.user


def request_principal() -> Principal | None:
    """This request's principal as far as it is known before its view runs (the rate limiter
    asks): the one established, else the API key's of a gateway request, else the signed-in
    user of a valid access token, else None. Nothing is established here, and the key or the
    token's user is loaded once per request."""
    established: Principal | None = g.get(_PRINCIPAL)
    if established is not None:
        return established
    if gateway_request():
        return None if isinstance(_key_found(), InvalidApiKey) else _key_principal()
    user = request_user()
    return None if user is None else Principal.signed_in(user)


# Keys open the gateway's door only, and tokens every other.
GATEWAY_PREFIX = "/v1"
# Where this request's API key (or why it was refused) is kept (flask.g).
_API_KEY = "creditapp_api_key"


def gateway_request() -> bool:
    return request.path == GATEWAY_PREFIX or request.path.startswith(f"{GATEWAY_PREFIX}/")


def _key_found() -> api_keys.LiveKey | InvalidApiKey:
    """The request's live API key, looked up once per request (never cached across requests:
    a revoked key is refused at once), or why there is none."""
    found: api_keys.LiveKey | InvalidApiKey | None = g.get(_API_KEY)
    if found is None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise InvalidApiKey("An API key is required: Authorization: Bearer ca-...")
            found = api_keys.authenticate(db.session, presented.strip(), now=datetime.now(UTC))
        except InvalidApiKey as refused:
            found = refused
        setattr(g, _API_KEY, found)
    return found


def _key_principal() -> Principal:
    live = _live_key()
    return Principal.with_api_key(live.key.id, owner=live.owner)


def _live_key() -> api_keys.LiveKey:
    found = _key_found()
    if isinstance(found, InvalidApiKey):
        raise found
    return found


def request_api_key() -> ApiKey:
    """This gateway request's API key, or InvalidApiKey."""
    return _live_key().key


def key_authenticated() -> Callable[[F], F]:
    """Require a live API key (the gateway's door); it becomes the request's principal, acting
    as its owner, and its `last_used_at` is kept to the minute."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            establish(_key_principal())
            key, now = request_api_key(), datetime.now(UTC)
            if api_keys.use_unrecorded(key, now=now):  # once a minute: no transaction else
                with write_transaction(db.session):
                    api_keys.mark_used(db.session, key, now=now)
            return view(*args, **kwargs)

        return openapi.declare(wrapper, security="api_key")  # type: ignore[return-value]

    return decorator


def authenticated(*, admin: bool = False) -> Callable[[F], F]:
    """Require a valid access token, and the admin role when `admin`; its user becomes the
    request's principal."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _verify_once()
            who = establish(Principal.signed_in(get_current_user()))
            if admin and not (who.user is not None and who.user.is_admin):
                raise Forbidden()
            return view(*args, **kwargs)

        return openapi.declare(wrapper, security="access_token", admin=admin)  # type: ignore[return-value]

    return decorator


def _verify_once() -> None:
    """Verify the access token and load its user, unless the rate limiter already did so in
    this request (one user lookup per request)."""
    if request_user() is None:
        verify_jwt_in_request()  # refuses the request in the chosen error shape


def request_user() -> User | None:
    """The user of this request's valid access token, or None: the token is verified and its
    user loaded once per request, whoever asks first (the rate limiter, then the view)."""
    try:
        user: User | None = get_current_user()
        return user
    except RuntimeError:  # not verified yet in this request
        pass
    try:
        verified = verify_jwt_in_request(optional=True)
    except (JWTExtendedException, PyJWTError):
        return None  # refused by the view, in the chosen error shape
    if verified is None:  # no token; or an OPTIONS request, which flask-jwt-extended skips
        return None
    loaded: User | None = get_current_user()
    return loaded


def audit_context() -> ledger.AuditContext:
    """The audit records' actor, from the request's principal."""
    actor_type, actor_id = principal().actor
    return ledger.AuditContext(
        actor_type=actor_type,
        actor_id=actor_id,
        request_id=g.get("request_id"),
        client_ip=request.remote_addr,
    )


def _forget_principal() -> None:
    """A request starts with no principal, even when it shares an app context with an earlier
    one (a test client inside `app.app_context()`)."""
    g.pop(_PRINCIPAL, None)
    g.pop(_API_KEY, None)


def register_identity(app: Flask) -> None:
    app.before_request(_forget_principal)


def _user_not_loaded(_header: dict[str, Any], claims: dict[str, Any]) -> Response:
    if tokens.was_revoked(claims):
        security_event("token_revoked", session_id=claims.get("sid"))
        return from_error(TokenRevoked())
    return from_error(Unauthorized("The token's user or session does not exist."))


def register_token_errors(jwt: JWTManager) -> None:
    """Route every token failure through the error shape chosen for the request."""
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
