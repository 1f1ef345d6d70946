"""Sign-in and sessions: Google sign-in, the demo sign-in, refresh with rotation, logout."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from marshmallow import Schema, fields, validate
from sqlalchemy.exc import IntegrityError

from creditapp import ledger
from creditapp.api import limits
from creditapp.api.identity import audit_context, authenticated, caller
from creditapp.api.me import UserSchema
from creditapp.api.openapi import answers, declares
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Text
from creditapp.api.security import security_event
from creditapp.auth import google, sessions, tokens, users
from creditapp.auth.models import User
from creditapp.database import DbSession, write_transaction
from creditapp.errors import AccountExists, Conflict, InvalidIdToken, NotFound, TokenRevoked
from creditapp.extensions import db

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Sign-in and sessions")


class DemoSignInArgs(Schema):
    role = Text(
        load_default="user",
        max_length=8,
        validate=validate.OneOf(["user", "admin"]),
        metadata={"description": "sign in as the demo user, or as the demo admin"},
    )


class GoogleArgs(Schema):
    id_token = Text(required=True, max_length=8192)


class TokensSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()


class SignInSchema(TokensSchema):
    user = fields.Nested(UserSchema)


def _sign_in(find_user: Callable[[DbSession, datetime], User]) -> dict[str, Any]:
    """Find (or create) the user and start a session, in one transaction. A first sign-in that
    raced another for the same person (a unique key refused it, or it found the email taken
    meanwhile) runs again and finds theirs; a real conflict is refused again."""
    try:
        return _sign_in_once(find_user)
    except (IntegrityError, Conflict):
        return _sign_in_once(find_user)


def _sign_in_once(find_user: Callable[[DbSession, datetime], User]) -> dict[str, Any]:
    with write_transaction(db.session):
        now = datetime.now(UTC)
        user = find_user(db.session, now)
        issued = tokens.sign_in(db.session, user=user, now=now)
    return {**vars(issued), "user": user}


def _sign_in_context() -> ledger.AuditContext:
    return ledger.AuditContext(
        actor_type="system",
        actor_id="sign-in",
        request_id=g.get("request_id"),
        client_ip=request.remote_addr,
    )


@blp.route("/google", methods=["POST"])
@limits.sign_in
@blp.arguments(GoogleArgs)
@blp.response(200, SignInSchema)
@answers(401, 409)
def google_sign_in(args: dict[str, Any]) -> Any:
    config = current_app.config
    try:
        identity = google.verify(
            args["id_token"],
            client_ids=config["GOOGLE_CLIENT_IDS"],
            certs_url=config["GOOGLE_CERTS_URL"],
        )
    except InvalidIdToken as error:
        security_event("invalid_id_token", message=error.message)
        raise
    try:
        return _sign_in(
            lambda session, now: google.user_of(
                session, identity=identity, context=_sign_in_context(), now=now
            )
        )
    except AccountExists as refused:
        security_event("google_link_refused", user_id=str(refused.user_id), refusal=refused.refusal)
        raise


@blp.route("/demo", methods=["POST"])
@limits.limiter.limit(limits.demo_sign_in, key_func=limits.client_ip)
@blp.arguments(DemoSignInArgs, required=False)
@blp.response(200, SignInSchema)
@answers(404)
def demo_sign_in(args: dict[str, Any]) -> Any:
    """Only in demo mode (`make run`): signs in as the demo user (or the demo admin). Elsewhere
    it does not exist."""
    if not current_app.config["DEMO_MODE"]:
        raise NotFound("The resource does not exist.")
    email = users.DEMO_ADMIN if args.get("role") == "admin" else users.DEMO_USER

    def demo_user(session: DbSession, _now: datetime) -> User:
        user = users.find_by_email(session, email)
        if user is None:
            raise NotFound("There is no demo user: run `flask --app wsgi demo seed`.")
        return user

    return _sign_in(demo_user)


@blp.route("/refresh", methods=["POST"])
@declares(security="refresh_token")
@blp.response(200, TokensSchema)
def refresh() -> Any:
    """With the refresh token as bearer: new tokens, the old refresh token spent (presented
    again within REFRESH_REUSE_GRACE_SECONDS, it gets the same new tokens again)."""
    verify_jwt_in_request(refresh=True)
    reuse_grace = timedelta(seconds=current_app.config["REFRESH_REUSE_GRACE_SECONDS"])
    with write_transaction(db.session):
        issued = tokens.refresh(
            db.session,
            user=caller(),
            claims=get_jwt(),
            now=datetime.now(UTC),
            reuse_grace=reuse_grace,
            # Not the caller's doing: the service revokes a session whose copy is abroad.
            context=_sign_in_context(),
        )
    if issued is None:  # a copy of a rotated-away token: the session is revoked now
        security_event("refresh_token_reused", session_id=get_jwt()["sid"])
        raise TokenRevoked("This refresh token was already used; its session is revoked.")
    return vars(issued)


@blp.route("/logout", methods=["POST"])
@authenticated()
@blp.response(204)
def logout() -> None:
    """Revoke this session: its access and refresh tokens are refused from now on."""
    with write_transaction(db.session):
        sessions.revoke(
            db.session,
            user_id=caller().id,
            session_id=get_jwt()["sid"],
            reason="logout",
            context=audit_context(),
            now=datetime.now(UTC),
        )


@blp.route("/logout-all", methods=["POST"])
@authenticated()
@blp.response(204)
def logout_all() -> None:
    """Revoke every session of the caller."""
    with write_transaction(db.session):
        sessions.revoke_all(
            db.session,
            user_id=caller().id,
            reason="logout_all",
            context=audit_context(),
            now=datetime.now(UTC),
        )
