"""Admin: compensations (refunds of a call's charge, owed when a provider failed after billing
or a settle went wrong) and the run that pays those still pending."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from creditapp import accounts
from creditapp.api import limits
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Credits, Id, PageArgs, Text, UtcDateTime, columns, page_of
from creditapp.billing import compensations as billing_compensations
from creditapp.billing.models import COMPENSATION_STATUSES, Compensation
from creditapp.extensions import db
from creditapp.jobs import compensations
from tasks.jobs import enqueue

blp = Blueprint(
    "compensations",
    __name__,
    url_prefix="/api/admin/credit",
    description="Compensations: refunds owed for failed calls, and the run that pays them",
)


class CompensationArgs(PageArgs):
    status = Text(load_default=None, max_length=16, validate=validate.OneOf(COMPENSATION_STATUSES))


class CompensationSchema(Schema):
    id = Id()
    # The owner of a personal account it is owed to; null when a team's account is owed.
    user_id = Id(allow_none=True)
    user_email = fields.String(allow_none=True, metadata={"description": "that user's email"})
    usage_id = Id()
    amount = Credits()
    reason = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    next_attempt_at = UtcDateTime()
    last_error = fields.String(allow_none=True)
    requested_by = fields.String()
    created_at = UtcDateTime()
    completed_at = UtcDateTime(allow_none=True)


class ProcessingSchema(Schema):
    task_id = fields.String()
    pending = fields.Integer()


@blp.route("/process-compensations", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.response(202, ProcessingSchema)
def process_compensations() -> Any:
    pending = compensations.request_run(db.session, context=audit_context(), now=datetime.now(UTC))
    return {"task_id": enqueue("compensations"), "pending": pending}


@blp.route("/compensations", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(CompensationArgs, location="query")
@blp.response(200, page_of(CompensationSchema))
def compensation_list(args: dict[str, Any]) -> Any:
    query = accounts.with_owner_email(billing_compensations.get_all(status=args["status"]))
    return keyset_page(
        db.session,
        query,
        key=Compensation.id,
        args=args,
        item=lambda row: {**columns(row[0]), "user_id": row[1], "user_email": row[2]},
        position=lambda item: item["id"],
    )
