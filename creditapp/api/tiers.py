"""Admin: the tiers (monthly credits, allowed models, token and rate limits) and which tier
each user is on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from creditapp import accounts
from creditapp.api import limits
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import Credits, Id, Pattern, Text
from creditapp.auth import tiers, users
from creditapp.extensions import db
from creditapp.metering.providers import PROVIDER_NAMES

blp = Blueprint("tiers", __name__, url_prefix="/api/admin", description="Tiers")


class TierArgs(Schema):
    name = Text(required=True, max_length=64, validate=Pattern(r"^[a-z0-9_-]+$"))
    monthly_credits = Credits(required=True, allow_zero=True)
    allowed_models = fields.List(
        Text(
            max_length=300,
            validate=Pattern(rf"^(\*|({'|'.join(PROVIDER_NAMES)}):(\*|[^\s:*]{{1,200}}))$"),
        ),
        required=True,
        validate=validate.Length(max=500),
    )
    default_max_tokens = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=1_000_000)
    )
    max_max_tokens = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=1_000_000)
    )
    rate_limits = fields.Dict(
        keys=Text(max_length=16, validate=validate.OneOf(["default", "spending", "sensitive"])),
        values=Text(
            max_length=40,
            # At least one request in at least one unit: "0 per minute" refused every call
            # of the tier's users, and "10 per 0 minutes" was read as per minute.
            validate=Pattern(
                r"^[1-9][0-9]{0,5} per ([1-9][0-9]{0,3} )?(second|minute|hour|day)s?$"
            ),
        ),
        load_default=None,
        allow_none=True,
    )


class TierSchema(Schema):
    name = fields.String()
    monthly_credits = Credits()
    allowed_models = fields.List(fields.String())
    default_max_tokens = fields.Integer()
    max_max_tokens = fields.Integer()
    rate_limits = fields.Dict(allow_none=True)


class TierListSchema(Schema):
    items = fields.List(fields.Nested(TierSchema))


class UserTierArgs(Schema):
    tier = Text(required=True, max_length=64)


class UserTierSchema(Schema):
    user_id = Id()
    tier = fields.String()


@blp.route("/tiers", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, TierListSchema)
def tier_list() -> Any:
    return {"items": tiers.get_all(db.session)}


@blp.route("/tiers", methods=["PUT"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.arguments(TierArgs)
@blp.response(200, TierSchema)
def put_tier(args: dict[str, Any]) -> Any:
    return tiers.put(db.session, **args, context=audit_context(), now=datetime.now(UTC))


@blp.route("/users/<user_id>/tier", methods=["PUT"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.arguments(UserTierArgs)
@blp.response(200, UserTierSchema)
def put_user_tier(args: dict[str, Any], user_id: str) -> Any:
    user = users.get(db.session, path_id(user_id, "user_id"))
    tiers.assign(
        db.session,
        user=user,
        account_id=accounts.of_user(db.session, user.id),
        tier_name=args["tier"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {"user_id": user.id, "tier": user.tier_name}
