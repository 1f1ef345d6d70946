"""The caller's own credits: balance, grants and ledger entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import jsonify
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from creditapp import ledger
from creditapp.api.identity import authenticated, caller
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import (
    BalanceSchema,
    Credits,
    GrantPageSchema,
    PageArgs,
    Text,
    TransactionPageSchema,
    UtcDateTime,
    in_range,
    token_counts,
)
from creditapp.auth import users
from creditapp.chat import usage_report
from creditapp.chat.models import ROLLUP_SUMS
from creditapp.chat.usage_report import GROUPINGS
from creditapp.extensions import db
from creditapp.ledger.models import ENTRY_TYPES, Grant, LedgerEntry
from creditapp.money import format_credits

blp = Blueprint("credit", __name__, url_prefix="/api/credit", description="Your credits")


MAX_USAGE_RANGE = timedelta(days=366)
COUNTED = ROLLUP_SUMS[:-1]  # every field but credits, which goes out as a credit string


class DateOrDateTime(fields.Field):
    """A date (a whole UTC day) or an ISO 8601 datetime; loads as (start, end) of the span."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and len(value) == 10:
            day = fields.Date()._deserialize(value, attr, data, **kwargs)
            start = in_range(datetime(day.year, day.month, day.day, tzinfo=UTC))
            return start, start + timedelta(days=1) - timedelta(microseconds=1)
        moment = UtcDateTime()._deserialize(value, attr, data, **kwargs)
        return moment, moment


class UsageArgs(Schema):
    from_ = DateOrDateTime(data_key="from", load_default=None)
    to = DateOrDateTime(load_default=None)
    group_by = Text(load_default="day", max_length=16, validate=validate.OneOf(GROUPINGS))

    @validates_schema
    def _range(self, data: dict[str, Any], **_kwargs: Any) -> None:
        now = datetime.now(UTC)
        end = data["to"][1] if data["to"] else now
        start = data["from_"][0] if data["from_"] else end - timedelta(days=30)
        if start > end:
            raise ValidationError("Must not be after 'to'.", field_name="from")
        if end - start > MAX_USAGE_RANGE:
            raise ValidationError("The range may span at most 366 days.", field_name="to")
        data["start"], data["end"] = start, end


class UsageCountsSchema(Schema):
    class Meta:
        include = {"requests": fields.Integer(), **token_counts(), "credits": Credits()}


class UsageGroupSchema(UsageCountsSchema):
    key = fields.String()


class UsageReportSchema(Schema):
    from_ = UtcDateTime(data_key="from", attribute="start")
    to = UtcDateTime(attribute="end")
    group_by = fields.String()
    totals = fields.Nested(UsageCountsSchema)
    groups = fields.List(fields.Nested(UsageGroupSchema))


class TransactionArgs(PageArgs):
    type = Text(load_default=None, max_length=16, validate=validate.OneOf(ENTRY_TYPES))


@blp.route("/balance", methods=["GET"])
@authenticated()
@blp.response(200, BalanceSchema)
def balance() -> Any:
    return users.credit_summary(db.session, user=caller(), now=datetime.now(UTC))


@blp.route("/grants", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, GrantPageSchema)
def grants(args: dict[str, Any]) -> Any:
    account_id = users.account_id_of(db.session, caller().id)
    query = ledger.grants_of(account_id)
    page = keyset_page(db.session, query, key=Grant.id, args=args, position=lambda g: g.id)
    page["items"] = ledger.grant_standings(
        db.session, account_id=account_id, grants=page["items"], now=datetime.now(UTC)
    )
    return page


@blp.route("/usage", methods=["GET"])
@authenticated()
@blp.arguments(UsageArgs, location="query")
@blp.response(200, UsageReportSchema)
def usage(args: dict[str, Any]) -> Any:
    report = usage_report.report(
        db.session,
        user_id=caller().id,
        start=args["start"],
        end=args["end"],
        group_by=args["group_by"],
    )
    # Built by hand rather than dumped through UsageReportSchema (which documents it): a year
    # by day is 366 groups, and dumping them was the larger part of the endpoint's time.
    moment = UtcDateTime()
    return jsonify(
        {
            "from": moment._serialize(report.start, None, None),
            "to": moment._serialize(report.end, None, None),
            "group_by": report.group_by,
            "totals": {**report.totals, "credits": format_credits(report.totals["credits"])},
            "groups": [
                {
                    "key": key,
                    **dict(zip(COUNTED, sums, strict=False)),
                    "credits": format_credits(sums[-1]),
                }
                for key, sums in report.groups
            ],
        }
    )


@blp.route("/transactions", methods=["GET"])
@authenticated()
@blp.arguments(TransactionArgs, location="query")
@blp.response(200, TransactionPageSchema)
def transactions(args: dict[str, Any]) -> Any:
    account_id = users.account_id_of(db.session, caller().id)
    query = ledger.entries_of(account_id, entry_type=args["type"])
    return keyset_page(
        db.session, query, key=LedgerEntry.seq, args=args, position=lambda entry: entry.seq
    )
