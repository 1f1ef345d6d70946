"""Admin views of the jobs' work: compensations, their processing, reconciliation reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery.utils import uuid as new_task_id
from flask import current_app
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from creditapp import ledger
from creditapp.api import limits
from creditapp.api.chat import UsageSchema
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Credits, Id, PageArgs, UtcDateTime, columns, page_of
from creditapp.chat.models import COMPENSATION_STATUSES, Compensation, UnbilledUsage
from creditapp.database import after_commit
from creditapp.errors import NotFound
from creditapp.extensions import db
from creditapp.jobs import compensations, reconciliation
from creditapp.jobs.schedule import TASK
from creditapp.ledger.models import Account

blp = Blueprint("jobs", __name__, url_prefix="/api/admin/credit", description="Background jobs")


class CompensationArgs(PageArgs):
    status = fields.String(load_default=None, validate=validate.OneOf(COMPENSATION_STATUSES))


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
    ran_at = UtcDateTime()
    checked_accounts = fields.Integer()
    drift = fields.List(fields.Nested(DriftSchema))
    unbilled_calls = fields.Integer(
        metadata={"description": "provider calls answered but never billed (a failed settle)"}
    )
    unbilled_cost = Credits(metadata={"type": "string", "description": "what those calls cost"})


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
    pending = compensations.pending_count(db.session)
    ledger.record_action(
        db.session,
        action="compensations_requested",
        context=audit_context(),
        now=datetime.now(UTC),
        details={"pending": pending},
    )
    celery = current_app.extensions["celery"]
    # The task id is chosen now, so the stored (replayable) response can name it; the task is
    # sent only once this request's transaction has committed.
    task_id = new_task_id()
    after_commit(
        db.session, lambda: celery.send_task(TASK, args=("compensations",), task_id=task_id)
    )
    return {"task_id": task_id, "pending": pending}


@blp.route("/compensations", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(CompensationArgs, location="query")
@blp.response(200, page_of(CompensationSchema))
def compensation_list(args: dict[str, Any]) -> Any:
    query = select(Compensation, Account.user_id).join(
        Account, Account.id == Compensation.account_id
    )
    if args["status"]:
        query = query.where(Compensation.status == args["status"])
    return keyset_page(
        db.session,
        query,
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
        select(UnbilledUsage),
        key=UnbilledUsage.id,
        args=args,
        position=lambda item: item.id,
    )


@blp.route("/reconciliation", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, ReconciliationSchema)
def reconciliation_report() -> Any:
    report = reconciliation.latest(db.session)
    if report is None:
        raise NotFound("No reconciliation has run yet.")
    return report
