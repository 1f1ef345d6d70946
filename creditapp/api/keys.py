"""API keys for the gateway: a user's own (`/api/keys`), and the admins' view of anyone's.

A key is shown once, in the response that creates it; a retry of that request with the same
Idempotency-Key answers the same record without it (the stored response never holds it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import jsonify
from marshmallow import Schema, fields, validate

from creditapp.accounts import paying_account, teams
from creditapp.api import limits
from creditapp.api.idempotency import idempotent, without
from creditapp.api.identity import audit_context, authenticated, caller, principal
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import Credits, Id, PageArgs, Pattern, Text, UtcDateTime, page_of
from creditapp.auth import api_keys, users
from creditapp.auth.models import ApiKey
from creditapp.extensions import db
from creditapp.ledger.models import CAP_PERIODS
from creditapp.metering.providers import PROVIDER_NAMES

blp = Blueprint("keys", __name__, url_prefix="/api", description="API keys for the gateway")

# "provider/model" or "provider/*", as the gateway's `model` names them.
MODEL_PATTERN = rf"^({'|'.join(PROVIDER_NAMES)})/(\*|[^\s*]{{1,200}})$"


def _allowed_models(**kwargs: Any) -> fields.List:
    return fields.List(
        Text(max_length=300, validate=Pattern(MODEL_PATTERN)),
        validate=validate.Length(min=1, max=100),
        allow_none=True,
        metadata={"description": '"provider/model" or "provider/*"; null: all the tier allows'},
        **kwargs,
    )


class KeyArgs(Schema):
    name = Text(required=True, max_length=100)
    team_id = Id(load_default=None, allow_none=True)
    limit = Credits(load_default=None, allow_none=True)
    limit_period = fields.String(load_default="total", validate=validate.OneOf(CAP_PERIODS))
    allowed_models = _allowed_models(load_default=None)
    expires_at = UtcDateTime(load_default=None, allow_none=True)


class KeyChangeArgs(Schema):
    name = Text(max_length=100)
    limit = Credits(allow_none=True)
    allowed_models = _allowed_models()
    expires_at = UtcDateTime(allow_none=True)


class KeySchema(Schema):
    id = Id(attribute="key.id")
    name = fields.String(attribute="key.name")
    prefix = fields.String(attribute="key.prefix")
    team_id = Id(attribute="key.team_id", allow_none=True)
    limit = Credits(allow_none=True)
    limit_period = fields.String()
    spent = Credits(metadata={"description": "spent in the current period"})
    allowed_models = fields.List(fields.String(), attribute="key.allowed_models", allow_none=True)
    expires_at = UtcDateTime(attribute="key.expires_at", allow_none=True)
    created_at = UtcDateTime(attribute="key.created_at")
    last_used_at = UtcDateTime(
        attribute="key.last_used_at",
        allow_none=True,
        metadata={"description": "to the minute: written at most once a minute"},
    )
    revoked_at = UtcDateTime(attribute="key.revoked_at", allow_none=True)


class NewKeySchema(KeySchema):
    key = fields.String(
        metadata={"description": "the key itself: shown in this response only"},
    )


KeyPageSchema = page_of(KeySchema)


@blp.route("/keys", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent(kept=without("key"))
@blp.arguments(KeyArgs)
@blp.response(201, NewKeySchema)
@answers(404)
def create_key(args: dict[str, Any]) -> Any:
    team_id = args.pop("team_id")
    if team_id is not None:  # not made while a removal of the caller from the team runs
        teams.staying_member(db.session, team_id=team_id, user_id=caller().id)
    issued = api_keys.create(
        db.session,
        owner=caller(),
        account_id=paying_account(db.session, principal(), team_id),
        team_id=team_id,
        **args,
        context=audit_context(),
        now=datetime.now(UTC),
    )
    response = jsonify({**KeySchema().dump(issued.standing), "key": issued.secret})
    response.status_code = 201
    return response


@blp.route("/keys", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, KeyPageSchema)
def keys(args: dict[str, Any]) -> Any:
    return _page(caller().id, args)


def _page(user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return keyset_page(
        db.session,
        api_keys.of_user(user_id),
        key=ApiKey.id,
        args=args,
        item=lambda row: api_keys.standing_of(row[0], row[1], now=now),
        position=lambda standing: standing.key.id,
    )


@blp.route("/keys/<key_id>", methods=["GET"])
@authenticated()
@blp.response(200, KeySchema)
def key(key_id: str) -> Any:
    return api_keys.get(
        db.session,
        key_id=path_id(key_id, "key_id"),
        user_id=caller().id,
        now=datetime.now(UTC),
    )


@blp.route("/keys/<key_id>", methods=["PATCH"])
@authenticated()
@idempotent()
@blp.arguments(KeyChangeArgs)
@blp.response(200, KeySchema)
@answers(404, 409)
def change_key(args: dict[str, Any], key_id: str) -> Any:
    now = datetime.now(UTC)
    standing = api_keys.get(
        db.session, key_id=path_id(key_id, "key_id"), user_id=caller().id, now=now, to_change=True
    )
    return api_keys.change(db.session, standing, context=audit_context(), now=now, **args)


@blp.route("/keys/<key_id>", methods=["DELETE"])
@authenticated()
@idempotent()
@blp.response(204)
@answers(404)
def revoke_key(key_id: str) -> Any:
    _revoke(key_id, user_id=caller().id)


def _revoke(key_id: str, *, user_id: int | None) -> None:
    now = datetime.now(UTC)
    standing = api_keys.get(
        db.session, key_id=path_id(key_id, "key_id"), user_id=user_id, now=now, to_change=True
    )
    api_keys.revoke(db.session, standing.key, context=audit_context(), now=now)


@blp.route("/admin/users/<user_id>/keys", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PageArgs, location="query")
@blp.response(200, KeyPageSchema)
@answers(404)
def user_keys(args: dict[str, Any], user_id: str) -> Any:
    user = users.get(db.session, path_id(user_id, "user_id"))
    return _page(user.id, args)


@blp.route("/admin/keys/<key_id>", methods=["DELETE"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.response(204)
@answers(404)
def admin_revoke_key(key_id: str) -> Any:
    _revoke(key_id, user_id=None)
