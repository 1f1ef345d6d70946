"""Admin: the price book and the tiers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from creditapp.api import limits
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import Credits, Id, PageArgs, Text, UtcDateTime, page_of
from creditapp.auth import tiers, users
from creditapp.extensions import db
from creditapp.metering.providers import PROVIDER_NAMES
from creditapp.money import AmountError, parse_usd_per_million
from creditapp.pricing import book
from creditapp.pricing.models import Price

blp = Blueprint("pricing", __name__, url_prefix="/api/admin", description="Prices and tiers")


class UsdPerMillion(fields.Field):
    """USD per 1M tokens: a decimal string (or integer) >= 0 with at most 6 decimals."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault(
            "metadata",
            {
                "type": "string",
                "pattern": r"^[0-9]+(\.[0-9]{1,6})?$",
                "example": "2.5",
                "description": "USD per 1M tokens, at most 6 decimals",
            },
        )
        super().__init__(**kwargs)

    def _serialize(self, value: Decimal | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else format(value.normalize(), "f")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        try:
            return parse_usd_per_million(value)
        except AmountError as error:
            raise ValidationError(str(error)) from error


class PriceArgs(Schema):
    provider = Text(required=True, max_length=32, validate=validate.OneOf(PROVIDER_NAMES))
    model = Text(required=True, max_length=200)
    input = UsdPerMillion(required=True)
    output = UsdPerMillion(required=True)
    cached_input = UsdPerMillion(load_default=None, allow_none=True)
    cache_write = UsdPerMillion(load_default=None, allow_none=True)
    effective_from = UtcDateTime(load_default=None, allow_none=True)


class PriceListArgs(PageArgs):
    provider = Text(load_default=None, max_length=32, validate=validate.OneOf(PROVIDER_NAMES))
    model = Text(load_default=None, max_length=200)


class PriceSchema(Schema):
    id = Id()
    provider = fields.String()
    model = fields.String()
    input = UsdPerMillion()
    output = UsdPerMillion()
    cached_input = UsdPerMillion(allow_none=True)
    cache_write = UsdPerMillion(allow_none=True)
    prompt_tiers = fields.List(fields.Dict(), allow_none=True)
    effective_from = UtcDateTime()
    source = fields.String()
    created_at = UtcDateTime()


PricePageSchema = page_of(PriceSchema)


class TierArgs(Schema):
    name = Text(required=True, max_length=64, validate=validate.Regexp(r"^[a-z0-9_-]+$"))
    monthly_credits = Credits(required=True, allow_zero=True)
    allowed_models = fields.List(
        Text(
            max_length=300,
            validate=validate.Regexp(rf"^(\*|({'|'.join(PROVIDER_NAMES)}):(\*|[^\s:*]{{1,200}}))$"),
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
            validate=validate.Regexp(r"^[0-9]{1,6} per [0-9]{0,4} ?(second|minute|hour|day)s?$"),
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


@blp.route("/pricing", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PriceListArgs, location="query")
@blp.response(200, PricePageSchema)
def prices(args: dict[str, Any]) -> Any:
    query = book.get_all(provider=args["provider"], model=args["model"])
    return keyset_page(db.session, query, key=Price.id, args=args, position=lambda p: p.id)


@blp.route("/pricing", methods=["PUT"])
@limits.limiter.limit(limits.sensitive)
@authenticated(admin=True)
@idempotent()
@blp.arguments(PriceArgs)
@blp.response(201, PriceSchema)
@answers(409)
def add_price(args: dict[str, Any]) -> Any:
    return book.put(
        db.session,
        provider=args["provider"],
        model=args["model"],
        rates=book.Rates(*(args[name] for name in book.RATE_NAMES)),
        effective_from=args["effective_from"],
        context=audit_context(),
        now=datetime.now(UTC),
    )


@blp.route("/tiers", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, TierListSchema)
def tier_list() -> Any:
    return {"items": tiers.get_all(db.session)}


@blp.route("/tiers", methods=["PUT"])
@limits.limiter.limit(limits.sensitive)
@authenticated(admin=True)
@idempotent()
@blp.arguments(TierArgs)
@blp.response(200, TierSchema)
def put_tier(args: dict[str, Any]) -> Any:
    return tiers.put(db.session, **args, context=audit_context(), now=datetime.now(UTC))


@blp.route("/users/<user_id>/tier", methods=["PUT"])
@limits.limiter.limit(limits.sensitive)
@authenticated(admin=True)
@idempotent()
@blp.arguments(UserTierArgs)
@blp.response(200, UserTierSchema)
def put_user_tier(args: dict[str, Any], user_id: str) -> Any:
    user = users.get(db.session, path_id(user_id, "user_id"))
    tiers.assign(
        db.session,
        user=user,
        tier_name=args["tier"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {"user_id": user.id, "tier": user.tier_name}
