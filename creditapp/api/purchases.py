"""Buying credits: purchases through Stripe Checkout (`/api/credit/purchases`), and Stripe's
webhook (`/api/webhooks/stripe`), the one door that takes no token: a signature instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import stripe
import structlog
from flask import current_app, jsonify, request
from marshmallow import Schema, fields

from creditapp import accounts, idempotency, purchases
from creditapp.accounts import paying_account, teams
from creditapp.api import limits
from creditapp.api.idempotency import from_store, idempotent, to_store
from creditapp.api.identity import audit_context, authenticated, caller, establish, principal
from creditapp.api.openapi import answers, declares
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import Credits, Id, PageArgs, UtcDateTime, page_of
from creditapp.auth import users
from creditapp.auth.principal import Principal
from creditapp.database import DbSession
from creditapp.errors import PurchasesUnavailable, ValidationFailed, WebhookSignatureInvalid
from creditapp.extensions import db
from creditapp.metrics import WEBHOOK_SIGNATURE_FAILURES
from creditapp.purchases.models import Purchase

log = structlog.get_logger(__name__)

blp = Blueprint("purchases", __name__, url_prefix="/api", description="Buying credits")

# Stripe's tolerance for a signature's age: an older delivery is refused (a replay).
SIGNATURE_TOLERANCE_SECONDS = 300


class PurchaseArgs(Schema):
    credits = Credits(
        required=True,
        metadata={"description": "a whole number of credits, a multiple of 10 (one cent)"},
    )
    team_id = Id(load_default=None, allow_none=True)


class TeamArgs(Schema):
    team_id = Id(load_default=None, allow_none=True)


class PurchaseListArgs(PageArgs, TeamArgs):
    pass


class WebhookAnswerSchema(Schema):
    received = fields.Boolean()
    outcome = fields.String(
        metadata={"description": "granted, duplicate, ignored, unknown_purchase, ..."}
    )


class PurchaseSchema(Schema):
    id = Id()
    credits = Credits()
    amount_cents = fields.Integer()
    currency = fields.String()
    status = fields.String(metadata={"enum": list(purchases.models.PURCHASE_STATUSES)})
    problem = fields.String(
        allow_none=True,
        metadata={
            "description": "amount_mismatch: Stripe was paid another amount; not granted."
            " session_unknown: Stripe does not know its Checkout Session; left to an admin"
        },
    )
    checkout_url = fields.String(allow_none=True)
    team_id = Id(allow_none=True)
    clawed_back = Credits(metadata={"description": "taken back after a refund or a dispute"})
    shortfall = Credits(
        metadata={"description": "refunded or disputed credits that had been spent already"}
    )
    created_at = UtcDateTime()
    paid_at = UtcDateTime(allow_none=True)


PurchasePageSchema = page_of(PurchaseSchema)


@blp.route("/credit/purchases", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent(runs_own_transactions=True)
@blp.arguments(PurchaseArgs)
@blp.response(201, PurchaseSchema)
@answers(404)
def buy(
    args: dict[str, Any],
    claim: idempotency.Claim | None,
    release: Callable[[idempotency.Undo], None],
) -> Any:
    """Start a purchase: answers its Stripe Checkout `checkout_url`, where the buyer pays. The
    credits are granted once Stripe says the payment went through."""
    settings = current_app.config

    def respond(session: DbSession, purchase: Purchase) -> idempotency.StoredResponse:
        """The answer, kept for a retry in the transaction that records the session."""
        response = jsonify(PurchaseSchema().dump(purchase))
        response.status_code = 201
        stored = to_store(response)
        if claim is not None:
            idempotency.complete(session, claim, response=stored)
        return stored

    with purchases.checkout_of(settings) as checkout:
        stored = purchases.start(
            db.session,
            buyer=caller(),
            account_id=paying_account(db.session, principal(), args["team_id"]),
            team_id=args["team_id"],
            credits=args["credits"],
            terms=purchases.terms_of(settings),
            checkout=checkout,
            now=datetime.now(UTC),
            on_started=respond,
        )
    return from_store(stored)


@blp.route("/credit/purchases", methods=["GET"])
@authenticated()
@blp.arguments(PurchaseListArgs, location="query")
@blp.response(200, PurchasePageSchema)
@answers(404)
def purchase_list(args: dict[str, Any]) -> Any:
    """Your purchases, or a team's (a member of it sees their own, its owner and admins all)."""
    team_id = args.pop("team_id")
    if team_id is None:
        return _page(paying_account(db.session, principal()), args)
    read = teams.reading(db.session, team_id=team_id, user_id=caller().id)
    return _page(read.account_id, args, buyer_id=read.only_user)


@blp.route("/admin/users/<user_id>/purchases", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PageArgs, location="query")
@blp.response(200, PurchasePageSchema)
@answers(404)
def user_purchases(args: dict[str, Any], user_id: str) -> Any:
    """A user's purchases (their personal account's), with what refunds and disputes took back
    and any shortfall."""
    user = users.get(db.session, path_id(user_id, "user_id"))
    return _page(accounts.of_user(db.session, user.id), args)


def _page(account_id: int, args: dict[str, Any], *, buyer_id: int | None = None) -> dict[str, Any]:
    query = purchases.of_account(account_id)
    if buyer_id is not None:
        query = query.where(Purchase.user_id == buyer_id)
    return keyset_page(
        db.session,
        query,
        key=Purchase.id,
        args=args,
        position=lambda purchase: purchase.id,
    )


@blp.route("/credit/purchases/<purchase_id>", methods=["GET"])
@authenticated()
@blp.arguments(TeamArgs, location="query")
@blp.response(200, PurchaseSchema)
def purchase(args: dict[str, Any], purchase_id: str) -> Any:
    if args["team_id"] is None:
        account_id: int | None = paying_account(db.session, principal())
    else:
        read = teams.reading(db.session, team_id=args["team_id"], user_id=caller().id)
        account_id = read.account_id if read.only_user is None else None
    return purchases.get(
        db.session,
        account_id=account_id,
        buyer_id=caller().id,
        purchase_id=path_id(purchase_id, "purchase_id"),
    )


@blp.route("/webhooks/stripe", methods=["POST"])
@limits.exempt  # Stripe's retries are its own; a refused delivery would only come back later
@declares(security="stripe_signature")
@blp.response(200, WebhookAnswerSchema)
@answers(400)
def stripe_webhook() -> Any:
    """Stripe's events, verified by their signature over the raw body
    (`STRIPE_WEBHOOK_SECRET`): a purchase's payment, failure, expiry, refunds and disputes.
    Each event id takes effect once; a duplicate, an unknown type or an unknown purchase is
    answered 200 and changes nothing."""
    settings = current_app.config
    secret = settings["STRIPE_WEBHOOK_SECRET"]
    if not secret:
        raise PurchasesUnavailable()
    payload = request.get_data(cache=False)
    try:
        stripe.WebhookSignature.verify_header(
            payload,
            request.headers.get("Stripe-Signature"),
            secret,
            tolerance=SIGNATURE_TOLERANCE_SECONDS,
        )
    # TypeError: a signature of other than ASCII, which the SDK's hmac.compare_digest refuses.
    except (stripe.SignatureVerificationError, UnicodeDecodeError, TypeError) as error:
        WEBHOOK_SIGNATURE_FAILURES.labels("stripe").inc()
        log.warning("webhook_signature_refused", sender="stripe", error=type(error).__name__)
        raise WebhookSignatureInvalid() from error
    try:
        event = stripe.Event.construct_from(json.loads(payload), stripe.api_key)
    except (ValueError, AttributeError, TypeError, RecursionError) as error:
        # Signed, but no event: the SDK fails on anything but a JSON object in its own ways.
        raise ValidationFailed(details={"body": ["Not a Stripe event."]}) from error
    establish(Principal.verified_sender("stripe"))
    received = purchases.receive(
        db.session,
        event.to_dict(),
        terms=purchases.terms_of(settings),
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {"received": True, "outcome": received.outcome}
