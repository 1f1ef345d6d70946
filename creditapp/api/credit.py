"""The caller's own credits: balance, grants and ledger entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import fields, validate
from sqlalchemy import select

from creditapp.api.identity import authenticated, caller
from creditapp.api.pagination import decode_cursor, page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import (
    BalanceSchema,
    GrantPageSchema,
    PageArgs,
    TransactionPageSchema,
)
from creditapp.auth import users
from creditapp.extensions import db
from creditapp.ledger.models import ENTRY_TYPES, Grant, LedgerEntry

blp = Blueprint("credit", __name__, url_prefix="/api/credit", description="Your credits")


class TransactionArgs(PageArgs):
    type = fields.String(load_default=None, validate=validate.OneOf(ENTRY_TYPES))


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
    query = select(Grant).where(Grant.account_id == account_id)
    if (below := decode_cursor(args["cursor"])) is not None:
        query = query.where(Grant.id < below)
    rows = db.session.execute(query.order_by(Grant.id.desc()).limit(args["limit"] + 1)).scalars()
    return page(rows.all(), limit=args["limit"], position=lambda grant: grant.id)


@blp.route("/transactions", methods=["GET"])
@authenticated()
@blp.arguments(TransactionArgs, location="query")
@blp.response(200, TransactionPageSchema)
def transactions(args: dict[str, Any]) -> Any:
    account_id = users.account_id_of(db.session, caller().id)
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if args["type"]:
        query = query.where(LedgerEntry.type == args["type"])
    if (below := decode_cursor(args["cursor"])) is not None:
        query = query.where(LedgerEntry.seq < below)
    rows = db.session.execute(
        query.order_by(LedgerEntry.seq.desc()).limit(args["limit"] + 1)
    ).scalars()
    return page(rows.all(), limit=args["limit"], position=lambda entry: entry.seq)
