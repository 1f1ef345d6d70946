"""The caller's own credits: balance, grants and ledger entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import fields, validate
from sqlalchemy import select

from creditapp.api.identity import authenticated, caller
from creditapp.api.pagination import keyset_page
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
    return keyset_page(db.session, query, key=Grant.id, args=args, position=lambda g: g.id)


@blp.route("/transactions", methods=["GET"])
@authenticated()
@blp.arguments(TransactionArgs, location="query")
@blp.response(200, TransactionPageSchema)
def transactions(args: dict[str, Any]) -> Any:
    account_id = users.account_id_of(db.session, caller().id)
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if args["type"]:
        query = query.where(LedgerEntry.type == args["type"])
    return keyset_page(
        db.session, query, key=LedgerEntry.seq, args=args, position=lambda entry: entry.seq
    )
