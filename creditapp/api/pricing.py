"""Admin: the price book (what each model costs, from when)."""

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
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Id, PageArgs, Text, UtcDateTime, page_of
from creditapp.extensions import db
from creditapp.metering.providers import PROVIDER_NAMES
from creditapp.money import AmountError, parse_usd_per_million
from creditapp.pricing import book
from creditapp.pricing.models import Price

blp = Blueprint("pricing", __name__, url_prefix="/api/admin", description="Prices")


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
    q = Text(
        load_default=None,
        max_length=200,
        metadata={"description": "a part of the provider's or the model's name, any case"},
    )


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


@blp.route("/pricing", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PriceListArgs, location="query")
@blp.response(200, PricePageSchema)
def prices(args: dict[str, Any]) -> Any:
    query = book.get_all(provider=args["provider"], model=args["model"], containing=args["q"])
    return keyset_page(db.session, query, key=Price.id, args=args, position=lambda p: p.id)


@blp.route("/pricing", methods=["PUT"])
@limits.admin_mutation
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
