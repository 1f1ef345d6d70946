"""Admin views of the jobs' work: compensations, their processing, reconciliation reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from creditapp.api import limits
from creditapp.api.chat import UsageSchema
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Credits, Id, PageArgs, Text, UtcDateTime, columns, page_of
from creditapp.billing import compensations as billing_compensations
from creditapp.billing.models import COMPENSATION_STATUSES, Compensation, UnbilledUsage
from creditapp.chat import service
from creditapp.extensions import db
from creditapp.jobs import compensations, reconciliation
from tasks.jobs import enqueue

blp = Blueprint("jobs", __name__, url_prefix="/api/admin/credit", description="Background jobs")


class CompensationArgs(PageArgs):
    status = Text(load_default=None, max_length=16, validate=validate.OneOf(COMPENSATION_STATUSES))


class CompensationSchema(Schema):
    id = Id()
    user_id = Id()
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


class DriftSchema(Schema):
    user_id = fields.String()
    invariant = fields.String()
    expected = fields.String()
    actual = fields.String()


class ReconciliationSchema(Schema):
    ran_at = UtcDateTime(allow_none=True)
    checked_accounts = fields.Integer()
    drift = fields.List(fields.Nested(DriftSchema))
    unbilled_calls = fields.Integer(
        metadata={"description": "provider calls answered but never billed (a failed settle)"}
    )
    unbilled_cost = Credits(metadata={"description": "what those calls cost"})


class UnbilledUsageSchema(UsageSchema):
    id = Id()
    user_id = Id()
    conversation_id = Id()
    hold_id = Id()
    price_id = Id()
    provider = fields.String()
    model = fields.String()
    cost = Credits()
    error = fields.String()
    created_at = UtcDateTime()


@blp.route("/process-compensations", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
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
    return keyset_page(
        db.session,
        billing_compensations.get_all(status=args["status"]),
        key=Compensation.id,
        args=args,
        item=lambda row: {**columns(row[0]), "user_id": row[1]},
        position=lambda item: item["id"],
    )


@blp.route("/unbilled", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PageArgs, location="query")
@blp.response(200, page_of(UnbilledUsageSchema))
def unbilled_list(args: dict[str, Any]) -> Any:
    """Provider calls whose settle failed: voided, nothing charged, kept here to explain."""
    return keyset_page(
        db.session,
        service.unbilled_calls(),
        key=UnbilledUsage.id,
        args=args,
        position=lambda item: item.id,
    )


@blp.route("/reconciliation", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, ReconciliationSchema)
def reconciliation_report() -> Any:
    """The newest report; before the first run, an empty one with `ran_at` null."""
    return reconciliation.latest(db.session)
