"""The caller's own credits: balance, grants and ledger entries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import jsonify
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from creditapp import accounts, ledger
from creditapp.api import csv_export
from creditapp.api.identity import authenticated, caller, principal
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import (
    BalanceSchema,
    Credits,
    GrantSchema,
    Id,
    PageArgs,
    Text,
    TransactionSchema,
    UtcDateTime,
    columns,
    in_range,
    page_of,
    token_counts,
)
from creditapp.auth import users
from creditapp.billing import receipts, usage_report
from creditapp.billing.models import CALL_ENDINGS, ROLLUP_SUMS
from creditapp.billing.usage_report import GROUPINGS
from creditapp.chat import statements
from creditapp.extensions import db
from creditapp.ledger.models import ENTRY_TYPES, Grant, LedgerEntry
from creditapp.metering.usage import TOKEN_COUNTERS
from creditapp.money import format_credits

blp = Blueprint("credit", __name__, url_prefix="/api/credit", description="Your credits")


MAX_USAGE_RANGE = timedelta(days=366)
COUNTED = ROLLUP_SUMS[:-1]  # every field but credits, which goes out as a credit string


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class DateOrDateTime(fields.Field):
    """A date (a whole UTC day) or an ISO 8601 datetime; loads as (start, end) of the span."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and _DAY.fullmatch(value):
            day = fields.Date()._deserialize(value, attr, data, **kwargs)
            start = in_range(datetime(day.year, day.month, day.day, tzinfo=UTC))
            return start, start + timedelta(days=1) - timedelta(microseconds=1)
        moment = UtcDateTime()._deserialize(value, attr, data, **kwargs)
        return moment, moment


class UsageArgs(Schema):
    from_ = DateOrDateTime(data_key="from", load_default=None)
    to = DateOrDateTime(load_default=None)
    group_by = Text(
        load_default="day",
        max_length=16,
        validate=validate.OneOf(GROUPINGS),
        metadata={
            "description": "day_model: a group per day and model, its key the day and the model"
            ' separated by a space ("2026-11-20 openai:gpt-4o")'
        },
    )
    format = csv_export.format_field()

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
    from_ = DateOrDateTime(data_key="from", load_default=None)
    to = DateOrDateTime(load_default=None)
    format = csv_export.format_field()

    @validates_schema
    def _range(self, data: dict[str, Any], **_kwargs: Any) -> None:
        data["start"] = data["from_"][0] if data["from_"] else None
        data["end"] = data["to"][1] if data["to"] else None
        if data["start"] and data["end"] and data["start"] > data["end"]:
            raise ValidationError("Must not be after 'to'.", field_name="from")


@blp.route("/balance", methods=["GET"])
@authenticated()
@blp.response(200, BalanceSchema)
def balance() -> Any:
    return users.credit_summary(
        db.session,
        user=caller(),
        account_id=accounts.paying_account(db.session, principal()),
        now=datetime.now(UTC),
    )


class OwnGrantSchema(GrantSchema):
    origin = fields.String(
        metadata={
            "enum": list(ledger.OPENING_TYPES),
            "description": "the ledger entry that opened the grant: `refund` for a refund"
            " (its source is `admin`), `adjust` for a positive adjustment, `refresh` for"
            " subscription credits, `grant` for any other",
        }
    )


CSV_ANSWER = {"type": "string", "format": "binary"}


class GrantListArgs(PageArgs):
    format = csv_export.format_field()


# A grant's CSV row: OwnGrantSchema's fields, in its order.
GRANT_COLUMNS = list(OwnGrantSchema().fields)


@blp.route("/grants", methods=["GET"])
@authenticated()
@blp.arguments(GrantListArgs, location="query")
@blp.response(200, page_of(OwnGrantSchema))
@blp.alt_response(
    200,
    success=True,
    schema=CSV_ANSWER,
    content_type="text/csv",
    description=csv_export.DESCRIPTION + " Every grant: `limit` and `cursor` do not apply.",
)
def grants(args: dict[str, Any]) -> Any:
    account_id = accounts.paying_account(db.session, principal())
    query = ledger.grants_of(account_id)
    if csv_export.wanted(args):
        # An account's grants are few (one a subscription period, and what admins and
        # purchases add): read at once.
        every = db.session.scalars(query.order_by(Grant.id.desc())).all()
        dumped = OwnGrantSchema().dump(_with_standing(account_id, list(every)), many=True)
        return csv_export.response(
            "grants.csv",
            GRANT_COLUMNS,
            # A grant without an expiry or a reason: an empty cell (csv writes None so).
            ([item[name] for name in GRANT_COLUMNS] for item in dumped),
        )
    page = keyset_page(db.session, query, key=Grant.id, args=args, position=lambda g: g.id)
    page["items"] = _with_standing(account_id, page["items"])
    return page


def _with_standing(account_id: int, grants: list[Grant]) -> list[dict[str, Any]]:
    """The grants as they stand now (what is left of each, whether it expired), each with
    the entry that opened it."""
    standings = ledger.grant_standings(
        db.session, account_id=account_id, grants=grants, now=datetime.now(UTC)
    )
    origins = ledger.grant_origins(db.session, grant_ids=[standing.id for standing in standings])
    return [
        {**vars(standing), "origin": origins.get(standing.id, "grant")} for standing in standings
    ]


# Ledger entries a CSV export reads at a time.
CSV_PAGE = 1000
TRANSACTIONS_CSV = csv_export.DESCRIPTION + (
    " Every entry of the range: `limit` and `cursor` do not apply."
)


@blp.route("/usage", methods=["GET"])
@authenticated()
@blp.arguments(UsageArgs, location="query")
@blp.response(200, UsageReportSchema)
@blp.alt_response(
    200,
    success=True,
    schema=CSV_ANSWER,
    content_type="text/csv",
    description=csv_export.DESCRIPTION,
)
def usage(args: dict[str, Any]) -> Any:
    report = usage_report.report(
        db.session,
        account_id=accounts.paying_account(db.session, principal()),
        user_id=caller().id,
        start=args["start"],
        end=args["end"],
        group_by=args["group_by"],
    )
    return usage_answer(report, args)


def usage_answer(report: usage_report.UsageReport, args: dict[str, Any]) -> Any:
    """A usage report as asked by UsageArgs: JSON, or its groups as CSV."""
    if csv_export.wanted(args):
        return csv_export.response(
            f"usage-by-{report.group_by}.csv",
            ["key", *COUNTED, "credits"],
            ([key, *sums[:-1], format_credits(sums[-1])] for key, sums in report.groups),
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


class DescribedTransactionSchema(TransactionSchema):
    description = fields.String(
        metadata={
            "description": "present with `describe=true` only: what the entry was for, in"
            " words: a charge's character and model (or model alone, for a call outside a"
            " conversation), a grant's source and reason, an adjustment's or a refund's reason,"
            " the credits a refresh or an expiry concerns"
        }
    )


class DescribedTransactionPageSchema(Schema):
    items = fields.Nested(DescribedTransactionSchema, many=True)
    next_cursor = fields.String(allow_none=True)


class OwnTransactionArgs(TransactionArgs):
    describe = fields.Boolean(
        load_default=False,
        metadata={"description": "true: each entry says what it was for (`description`)"},
    )


@blp.route("/transactions", methods=["GET"])
@authenticated()
@blp.arguments(OwnTransactionArgs, location="query")
@blp.response(200, DescribedTransactionPageSchema)
@blp.alt_response(
    200,
    success=True,
    schema=CSV_ANSWER,
    content_type="text/csv",
    description=TRANSACTIONS_CSV,
)
def transactions(args: dict[str, Any]) -> Any:
    """Ledger entries, newest first; `from` and `to` (dates or datetimes) bound them; with
    `describe=true` each says what it was for."""
    return transactions_of(accounts.paying_account(db.session, principal()), args)


def transactions_of(account_id: int, args: dict[str, Any], *, user_id: int | None = None) -> Any:
    """The account's ledger entries (those `user_id` caused, when given) as asked by
    OwnTransactionArgs: a page, or every one as CSV; a page's entries say what they were for
    when `describe` is asked (an entry reads the same in the user's list, a team's, and in an
    admin's list of the user's transactions)."""
    query = ledger.entries_of(
        account_id, entry_type=args["type"], start=args["start"], end=args["end"], user_id=user_id
    )
    if csv_export.wanted(args):
        moment = UtcDateTime()

        def page_below(seq: int | None) -> list[list[Any]]:
            """The next CSV_PAGE entries below `seq`, as rows; the session let go after it, so
            that a slow download holds no connection between pages. Entries never change and
            new ones come above the first, so pages read at different moments still join."""
            below = query if seq is None else query.where(LedgerEntry.seq < seq)
            try:
                entries = db.session.scalars(
                    below.order_by(LedgerEntry.seq.desc()).limit(CSV_PAGE)
                ).all()
                return [
                    [
                        entry.seq,
                        entry.id,
                        moment._serialize(entry.created_at, None, None),
                        entry.type,
                        format_credits(entry.amount),
                        format_credits(entry.balance_after),
                        entry.reference or "",
                        "" if entry.user_id is None else entry.user_id,
                    ]
                    for entry in entries
                ]
            finally:
                db.session.close()

        # The first page is read before the answer starts: a database that fails it gets the
        # request its 503, where a failure inside the streamed body could only cut it short.
        first = page_below(None)

        def rows() -> Iterator[list[Any]]:
            page = first
            while True:
                yield from (row[1:] for row in page)
                if len(page) < CSV_PAGE:
                    return
                page = page_below(page[-1][0])

        return csv_export.response(
            "transactions.csv",
            ["id", "created_at", "type", "amount", "balance_after", "reference", "user_id"],
            rows(),
        )
    page = keyset_page(
        db.session, query, key=LedgerEntry.seq, args=args, position=lambda entry: entry.seq
    )
    if args["describe"]:
        # Described on request only: a description costs two queries a page.
        descriptions = statements.describe(db.session, page["items"])
        page["items"] = [
            {**columns(entry), "description": descriptions[entry.id]} for entry in page["items"]
        ]
    return page


class ExactCredits(fields.Field):
    """Micro-credits that need not be whole (a line of a receipt), as an exact credit string."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault(
            "metadata",
            {
                "type": "string",
                "pattern": r"^[0-9]+(\.[0-9]+)?$",
                "description": "credits, exact (more than 6 decimals before rounding)",
            },
        )
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str:
        exact: Decimal = value
        return format(exact.scaleb(-6).normalize(), "f")


class CostLineSchema(Schema):
    bucket = fields.String(
        metadata={"enum": ["input", "cached_input", "cache_write", "output"]},
    )
    tokens = fields.Integer()
    usd_per_million = fields.Function(lambda line: format(line.usd_per_million.normalize(), "f"))
    credits = ExactCredits(attribute="micro_credits")


class ReceiptPriceSchema(Schema):
    id = Id()
    provider = fields.String()
    model = fields.String()
    effective_from = UtcDateTime()
    tier_above_input_tokens = fields.Integer(
        metadata={"description": "the prompt-size tier of the price row that applied (0: base)"}
    )


class ReceiptSchema(Schema):
    usage_id = Id(attribute="usage.id")
    provider = fields.String(attribute="usage.provider")
    model = fields.String(attribute="usage.model")
    usage = fields.Function(
        lambda receipt: {
            **{name: getattr(receipt.usage, name) for name in TOKEN_COUNTERS},
            "estimated": receipt.usage.estimated,
        }
    )
    ending = fields.String(attribute="usage.ending", metadata={"enum": list(CALL_ENDINGS)})
    is_partial = fields.Function(
        lambda receipt: receipt.usage.ending != "completed", data_key="partial"
    )
    price = fields.Function(
        lambda receipt: {
            **ReceiptPriceSchema().dump(receipt.price),
            "tier_above_input_tokens": receipt.tier_above_input_tokens,
        }
    )
    lines = fields.List(fields.Nested(CostLineSchema))
    exact = ExactCredits(attribute="exact_micro_credits")
    rounded_up = Credits(attribute="cost")
    charged = Credits()
    uncollected = Credits(attribute="hold.uncollected")
    hold_id = Id(attribute="hold.id")
    held = Credits(attribute="hold.amount")
    released = Credits()


class TransactionDetailSchema(Schema):
    entry = fields.Nested(TransactionSchema)
    receipt = fields.Nested(ReceiptSchema, allow_none=True)


@blp.route("/transactions/<entry_id>", methods=["GET"])
@authenticated()
@blp.response(200, TransactionDetailSchema)
def transaction(entry_id: str) -> Any:
    """One ledger entry and, for a charge, its receipt: the usage, the price row, the
    arithmetic line by line, the rounding, the hold and what it released."""
    return receipts.transaction(
        db.session,
        account_id=accounts.paying_account(db.session, principal()),
        entry_id=path_id(entry_id, "entry_id"),
    )
