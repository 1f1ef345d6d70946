"""Admin credit operations: grant, adjust, inspect a user's credit, read the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from creditapp import accounts, ledger
from creditapp.api import limits
from creditapp.api.credit import (
    CSV_ANSWER,
    TRANSACTIONS_CSV,
    DescribedTransactionPageSchema,
    OwnGrantSchema,
    OwnTransactionArgs,
    TransactionDetailSchema,
    transactions_of,
)
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.me import UserSchema
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import (
    AmountsSchema,
    BalanceSchema,
    Credits,
    GrantSchema,
    Id,
    PageArgs,
    Text,
    UtcDateTime,
    columns,
    page_of,
)
from creditapp.auth import sessions, users
from creditapp.auth.models import User
from creditapp.billing import receipts
from creditapp.chat import service as chat
from creditapp.extensions import db
from creditapp.ledger.models import GRANT_SOURCES, REASON_CHARS, AuditRecord, Grant

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Administration")


class AccountArgs(Schema):
    """Whose account an admin's operation is on: a user's or a team's."""

    user_id = Id(load_default=None, metadata={"description": "exactly one of user_id and team_id"})
    team_id = Id(load_default=None, metadata={"description": "a team's account"})

    @validates_schema(skip_on_field_errors=False)
    def _one_owner(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if (data.get("user_id") is None) == (data.get("team_id") is None):
            raise ValidationError("Give exactly one of user_id and team_id.", field_name="user_id")


def _account_of(args: dict[str, Any]) -> int:
    if args["team_id"] is not None:
        return accounts.of_team(db.session, args["team_id"])
    return accounts.of_user(db.session, args["user_id"])


class GrantArgs(AccountArgs):
    amount = Credits(required=True)
    reason = Text(required=True, max_length=REASON_CHARS)
    # Which sources an admin may grant is the ledger's rule (subscription credits come only
    # from refresh); the schema names the sources that exist.
    source = Text(load_default="admin", max_length=32, validate=validate.OneOf(GRANT_SOURCES))
    expires_at = UtcDateTime(load_default=None, allow_none=True)


class AdjustArgs(AccountArgs):
    amount = Credits(required=True, signed=True, allow_zero=True)
    reason = Text(required=True, max_length=REASON_CHARS)


class GrantResultSchema(Schema):
    grant = fields.Nested(GrantSchema)
    balance = fields.Nested(AmountsSchema)


class AdjustResultSchema(Schema):
    amount = Credits()
    balance = fields.Nested(AmountsSchema)


class UserCreditSchema(BalanceSchema):
    user_id = Id()
    email = fields.String()
    grants = fields.List(fields.Nested(OwnGrantSchema))


class AuditArgs(PageArgs):
    user_id = Id(load_default=None)
    action = Text(load_default=None, max_length=64)
    from_ = UtcDateTime(data_key="from", load_default=None)
    to = UtcDateTime(load_default=None)

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data["from_"] and data["to"] and data["from_"] > data["to"]:
            raise ValidationError("Must not be after 'to'.", field_name="from")


class AuditRecordSchema(Schema):
    id = Id()
    actor_type = fields.String()
    actor_id = fields.String(allow_none=True)
    action = fields.String()
    user_id = Id(allow_none=True)
    user_email = fields.String(allow_none=True, metadata={"description": "that user's email"})
    balance_before = Credits(allow_none=True)
    balance_after = Credits(allow_none=True)
    reserved_before = Credits(allow_none=True)
    reserved_after = Credits(allow_none=True)
    request_id = fields.String(allow_none=True)
    client_ip = fields.String(allow_none=True)
    details = fields.Dict()
    created_at = UtcDateTime()


AuditPageSchema = page_of(AuditRecordSchema)


@blp.route("/credit/grant", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.arguments(GrantArgs)
@blp.response(201, GrantResultSchema)
@answers(404)
def grant(args: dict[str, Any]) -> Any:
    now = datetime.now(UTC)
    result = ledger.grant(
        db.session,
        account_id=_account_of(args),
        amount=args["amount"],
        source=args["source"],
        reason=args["reason"],
        expires_at=args["expires_at"],
        context=audit_context(),
        now=now,
    )
    return {"grant": db.session.get(Grant, result.grant_id), "balance": result.balance}


@blp.route("/credit/adjust", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.arguments(AdjustArgs)
@blp.response(200, AdjustResultSchema)
@answers(404, 409)
def adjust(args: dict[str, Any]) -> Any:
    balance = ledger.adjust(
        db.session,
        account_id=_account_of(args),
        amount=args["amount"],
        reason=args["reason"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {"amount": args["amount"], "balance": balance}


class RefundArgs(Schema):
    message_id = Id(required=True)
    reason = Text(required=True, max_length=REASON_CHARS)


class RefundSchema(Schema):
    compensation_id = Id(attribute="id")
    message_id = Id()
    amount = Credits()
    status = fields.String()
    balance = fields.Nested(AmountsSchema)


@blp.route("/credit/refund", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.arguments(RefundArgs)
@blp.response(201, RefundSchema)
@answers(404, 409)
def refund(args: dict[str, Any]) -> Any:
    now = datetime.now(UTC)
    compensation = chat.refund_message(
        db.session,
        message_id=args["message_id"],
        reason=args["reason"],
        context=audit_context(),
        now=now,
    )
    return {
        "id": compensation.id,
        "message_id": args["message_id"],
        "amount": compensation.amount,
        "status": compensation.status,
        "balance": ledger.balance(db.session, account_id=compensation.account_id, now=now),
    }


class UserSearchArgs(PageArgs):
    q = Text(
        load_default=None,
        max_length=254,
        metadata={"description": "a part of the email, any case"},
    )


@blp.route("/users", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(UserSearchArgs, location="query")
@blp.response(200, page_of(UserSchema))
def user_list(args: dict[str, Any]) -> Any:
    """Users whose email contains `q`, newest first."""
    query = users.with_email_containing(args["q"])
    return keyset_page(db.session, query, key=User.id, args=args, position=lambda u: u.id)


@blp.route("/users/<user_id>/credit", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, UserCreditSchema)
def user_credit(user_id: str) -> Any:
    user = users.get(db.session, path_id(user_id, "user_id"))
    now = datetime.now(UTC)
    summary = users.credit_summary(
        db.session, user=user, account_id=accounts.of_user(db.session, user.id), now=now
    )
    live_grants = ledger.live_grants(db.session, account_id=summary.account_id)
    standings = ledger.grant_standings(
        db.session, account_id=summary.account_id, grants=live_grants, now=now
    )
    origins = ledger.grant_origins(db.session, grant_ids=[standing.id for standing in standings])
    return {
        **vars(summary),
        "user_id": user.id,
        "email": user.email,
        "grants": [
            {**vars(standing), "origin": origins.get(standing.id, "grant")}
            for standing in standings
        ],
    }


@blp.route("/users/<user_id>/transactions", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(OwnTransactionArgs, location="query")
@blp.response(200, DescribedTransactionPageSchema)
@blp.alt_response(
    200, success=True, schema=CSV_ANSWER, content_type="text/csv", description=TRANSACTIONS_CSV
)
def user_transactions(args: dict[str, Any], user_id: str) -> Any:
    """The user's ledger entries, as the user sees them at `GET /api/credit/transactions`;
    with `describe=true` each says what it was for."""
    user = users.get(db.session, path_id(user_id, "user_id"))
    return transactions_of(accounts.of_user(db.session, user.id), args)


class UserTransactionSchema(TransactionDetailSchema):
    message_id = Id(
        allow_none=True,
        metadata={
            "type": "string",
            "example": "42",
            "description": "the chat message a charge was for (what `POST /api/admin/credit/"
            "refund` refunds); null for any other entry",
        },
    )


@blp.route("/users/<user_id>/transactions/<entry_id>", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, UserTransactionSchema)
def user_transaction(user_id: str, entry_id: str) -> Any:
    """One of the user's entries with its receipt, as the user sees it, and the message a
    charge was for."""
    user = users.get(db.session, path_id(user_id, "user_id"))
    found = receipts.transaction(
        db.session,
        account_id=accounts.of_user(db.session, user.id),
        entry_id=path_id(entry_id, "entry_id"),
    )
    message_id = None
    if found.receipt is not None:
        message_id = chat.message_charged_by(db.session, found.receipt.usage.id)
    return {"entry": found.entry, "receipt": found.receipt, "message_id": message_id}


class RevokedSchema(Schema):
    user_id = Id()
    revoked_sessions = fields.Integer()


@blp.route("/users/<user_id>/revoke-sessions", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.response(200, RevokedSchema)
def revoke_sessions(user_id: str) -> Any:
    """Sign the user out everywhere: every token of every session is refused from now on."""
    user = users.get(db.session, path_id(user_id, "user_id"))
    revoked = sessions.revoke_all(
        db.session,
        user_id=user.id,
        reason="admin",
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {"user_id": user.id, "revoked_sessions": revoked}


@blp.route("/credit/audit", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(AuditArgs, location="query")
@blp.response(200, AuditPageSchema)
def audit(args: dict[str, Any]) -> Any:
    query = accounts.with_owner_email(
        ledger.audit_trail(
            user_id=args["user_id"], action=args["action"], start=args["from_"], end=args["to"]
        )
    )
    return keyset_page(
        db.session,
        query,
        key=AuditRecord.id,
        args=args,
        item=lambda row: {**columns(row[0]), "user_id": row[1], "user_email": row[2]},
        position=lambda record: record["id"],
    )
