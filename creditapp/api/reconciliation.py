"""Admin: the reconciliation report (the ledger checked against its invariants), a run of it
on request, and the unbilled calls it counts (provider calls answered but never billed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields

from creditapp.api import limits
from creditapp.api.chat import UsageSchema
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Credits, Id, PageArgs, UtcDateTime, page_of
from creditapp.billing import call as metered_call
from creditapp.billing.models import UnbilledUsage
from creditapp.extensions import db
from creditapp.jobs import reconciliation
from tasks.jobs import enqueue

blp = Blueprint(
    "reconciliation",
    __name__,
    url_prefix="/api/admin/credit",
    description="Reconciliation: the ledger's drift, and calls answered but never billed",
)


class DriftSchema(Schema):
    # The owner of the account: a user (their personal account) or a team.
    user_id = fields.String(allow_none=True)
    team_id = fields.String(allow_none=True)
    invariant = fields.String()
    expected = fields.String()
    actual = fields.String()


class ShortfallSchema(Schema):
    purchase_id = fields.String()
    user_id = fields.String()
    status = fields.String()
    shortfall = fields.String(metadata={"description": "credits"})


class ReconciliationSchema(Schema):
    ran_at = UtcDateTime(allow_none=True)
    checked_accounts = fields.Integer()
    drift = fields.List(fields.Nested(DriftSchema))
    unbilled_calls = fields.Integer(
        metadata={"description": "provider calls answered but never billed (a failed settle)"}
    )
    unbilled_cost = Credits(metadata={"description": "what those calls cost"})
    shortfalls = fields.List(
        fields.Nested(ShortfallSchema),
        metadata={
            "description": "purchases refunded or disputed after their credits were spent: "
            "what could not be taken back"
        },
    )


class UnbilledUsageSchema(UsageSchema):
    id = Id()
    user_id = Id()
    # None for a call that belonged to no conversation (the gateway's).
    conversation_id = Id(allow_none=True)
    hold_id = Id()
    price_id = Id()
    provider = fields.String()
    model = fields.String()
    cost = Credits()
    error = fields.String()
    created_at = UtcDateTime()


@blp.route("/unbilled", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PageArgs, location="query")
@blp.response(200, page_of(UnbilledUsageSchema))
def unbilled_list(args: dict[str, Any]) -> Any:
    """Provider calls whose settle failed: voided, nothing charged, kept here to explain."""
    return keyset_page(
        db.session,
        metered_call.unbilled_calls(),
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


class ReconciliationRunSchema(Schema):
    task_id = fields.String()


@blp.route("/reconciliation/run", methods=["POST"])
@limits.admin_mutation
@authenticated(admin=True)
@idempotent()
@blp.response(202, ReconciliationRunSchema)
def run_reconciliation() -> Any:
    """Queue a reconciliation now (beat also runs it on its period): once a worker has run it,
    its report is the newest at `GET /api/admin/credit/reconciliation`."""
    reconciliation.request_run(db.session, context=audit_context(), now=datetime.now(UTC))
    return {"task_id": enqueue("reconcile")}
