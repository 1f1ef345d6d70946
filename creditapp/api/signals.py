"""Signals out: low-balance alert thresholds (`/api/credit/alerts`) and the webhook endpoints
events are posted to (`/api/webhook-endpoints`), with each endpoint's delivery log, manual
retry and test event.

Each acts on the caller's personal account, or on a team's account when it names `team_id`:
any member reads the team's thresholds; its owner and admins set them and manage its
endpoints (a member is refused, 403); anyone else finds no team (404). An endpoint's secret is
shown once, in the response that creates it: a retry of that request answers the same record
without it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app
from marshmallow import Schema, fields, validate

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.api import limits
from creditapp.api.idempotency import idempotent, without
from creditapp.api.identity import audit_context, authenticated, caller
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import (
    BoundedList,
    Credits,
    Flag,
    Id,
    PageArgs,
    Text,
    UtcDateTime,
    page_of,
)
from creditapp.extensions import db
from creditapp.signals import delivery, endpoints, urls
from creditapp.signals.models import EVENT_TYPES, WebhookDelivery, WebhookEndpoint

blp = Blueprint(
    "signals", __name__, url_prefix="/api", description="Low-balance alerts and webhooks"
)


class TeamArgs(Schema):
    team_id = Id(load_default=None, allow_none=True)


class AlertArgs(TeamArgs):
    thresholds = BoundedList(
        Credits(),
        required=True,
        max_items=ledger.MAX_THRESHOLDS,
        metadata={
            "description": "the amounts of available credits to be told of when they fall below"
            " (each strictly below: one `balance.low` event per crossing); they replace the"
            " account's thresholds, `[]` removes them all"
        },
    )


class ThresholdSchema(Schema):
    threshold = Credits(attribute="amount")
    armed = fields.Boolean(
        metadata={
            "description": "false once available credits fell below it, until they are above"
            " it again"
        }
    )


class AlertsSchema(Schema):
    thresholds = fields.List(
        fields.Nested(ThresholdSchema), metadata={"description": "lowest first"}
    )
    team_id = Id(allow_none=True)


def _events(**kwargs: Any) -> BoundedList:
    return BoundedList(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        min_items=1,
        max_items=len(EVENT_TYPES),
        metadata={"description": "the event types to post to this endpoint"},
        **kwargs,
    )


def _url(**kwargs: Any) -> Text:
    return Text(
        max_length=urls.MAX_URL_LENGTH,
        metadata={
            "description": "https, to a public host (no loopback, private, link-local or"
            " metadata address, checked again at every delivery); a host with non-ASCII letters"
            " is kept in its IDNA form (`xn--`)"
        },
        **kwargs,
    )


def _allow_private() -> bool:
    return bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"])


def _checked_url(args: dict[str, Any], *_path: Any, **_kwargs: Any) -> None:
    """The URL checked against the URL rules, in place: `idempotent` runs this before its write
    transaction opens (resolving the host may take seconds, during which no lock may be held),
    for a request that runs only: the retry of one that succeeded gets its response even if
    the host has stopped resolving since."""
    if "url" in args:
        args["url"] = urls.checked(args["url"], allow_private=_allow_private())


class EndpointArgs(TeamArgs):
    url = _url(required=True)
    events = _events(required=True)


class EndpointChangeArgs(Schema):
    url = _url()
    events = _events()
    enabled = Flag(metadata={"description": "false: no events are posted, pending deliveries fail"})


class EndpointListArgs(PageArgs, TeamArgs):
    pass


class EndpointSchema(Schema):
    id = Id()
    url = fields.String()
    events = fields.List(fields.String(metadata={"enum": list(EVENT_TYPES)}))
    enabled = fields.Boolean()
    disabled_reason = fields.String(
        allow_none=True,
        metadata={
            "description": "`gone`: the service disabled it when it answered 410;"
            " `creator_left`: the team member who made it left or no longer manages the team"
        },
    )
    team_id = Id(allow_none=True)
    created_at = UtcDateTime()


class NewEndpointSchema(EndpointSchema):
    secret = fields.String(
        metadata={
            "description": "`whsec_` and base64: signs every delivery (Standard Webhooks);"
            " shown in this response only"
        }
    )


class DeliverySchema(Schema):
    id = Id(attribute="delivery.id")
    event_id = fields.String(
        metadata={"description": "the event's `webhook-id` (`evt_<n>`), the same every attempt"}
    )
    type = fields.String()
    status = fields.String(
        attribute="delivery.status", metadata={"enum": ["pending", "delivered", "failed"]}
    )
    attempts = fields.Integer(attribute="delivery.attempts")
    last_status = fields.Integer(
        attribute="delivery.last_status",
        allow_none=True,
        metadata={"description": "the HTTP status of the last attempt; null if none came back"},
    )
    last_error = fields.String(attribute="delivery.last_error", allow_none=True)
    next_attempt_at = UtcDateTime(
        attribute="delivery.next_attempt_at",
        allow_none=True,
        metadata={"description": "when a pending delivery is tried next"},
    )
    last_attempt_at = UtcDateTime(attribute="delivery.last_attempt_at", allow_none=True)
    delivered_at = UtcDateTime(attribute="delivery.delivered_at", allow_none=True)
    created_at = UtcDateTime(attribute="delivery.created_at")


class TestSentSchema(Schema):
    event_id = fields.String(metadata={"description": "the test event's `webhook-id`"})
    delivery_id = Id()


def _account(team_id: int | None, *, for_change: bool) -> int:
    return endpoints.managed_account(
        db.session, user_id=caller().id, team_id=team_id, for_change=for_change
    )


def _alerts(team_id: int | None, found: list[ledger.Threshold]) -> dict[str, Any]:
    return {"thresholds": found, "team_id": team_id}


@blp.route("/credit/alerts", methods=["PUT"])
@authenticated()
@idempotent()
@blp.arguments(AlertArgs)
@blp.response(200, AlertsSchema)
@answers(403, 404)
def set_alerts(args: dict[str, Any]) -> Any:
    """Replace the account's low-balance thresholds (at most 10). One kept keeps its state; a
    new one starts armed unless available credits are already below it."""
    team_id = args["team_id"]
    account_id = _account(team_id, for_change=True)
    found = ledger.set_thresholds(
        db.session,
        account_id=account_id,
        amounts=args["thresholds"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return _alerts(team_id, found)


@blp.route("/credit/alerts", methods=["GET"])
@authenticated()
@blp.arguments(TeamArgs, location="query")
@blp.response(200, AlertsSchema)
@answers(404)
def get_alerts(args: dict[str, Any]) -> Any:
    """The account's low-balance thresholds (a team's: any member may read them)."""
    team_id = args["team_id"]
    if team_id is None:
        account_id = accounts.of_user(db.session, caller().id)
    else:
        account_id = teams.reading(db.session, team_id=team_id, user_id=caller().id).account_id
    return _alerts(team_id, ledger.thresholds(db.session, account_id=account_id))


def _endpoint(endpoint: WebhookEndpoint, team_id: int | None) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoints.events_of(endpoint),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "team_id": team_id,
        "created_at": endpoint.created_at,
    }


def _managed(endpoint_id: str, *, for_change: bool = False) -> endpoints.Managed:
    return endpoints.get(
        db.session,
        endpoint_id=path_id(endpoint_id, "endpoint_id"),
        user_id=caller().id,
        for_change=for_change,
    )


@blp.route("/webhook-endpoints", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@blp.arguments(EndpointArgs)
@idempotent(kept=without("secret"), first=_checked_url)
@blp.response(201, NewEndpointSchema)
@answers(403, 404)
def create_endpoint(args: dict[str, Any]) -> Any:
    """A new endpoint, enabled, posted the events of the listed types from now on. Its
    `secret` is in this response only."""
    team_id = args["team_id"]
    endpoint = endpoints.create(
        db.session,
        user_id=caller().id,
        account_id=_account(team_id, for_change=True),
        url=args["url"],
        events=args["events"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {**_endpoint(endpoint, team_id), "secret": endpoint.secret}


@blp.route("/webhook-endpoints", methods=["GET"])
@authenticated()
@blp.arguments(EndpointListArgs, location="query")
@blp.response(200, page_of(EndpointSchema))
@answers(403, 404)
def list_endpoints(args: dict[str, Any]) -> Any:
    """The account's endpoints, newest first."""
    team_id = args.pop("team_id")
    return keyset_page(
        db.session,
        endpoints.of_account(_account(team_id, for_change=False)),
        key=WebhookEndpoint.id,
        args=args,
        item=lambda row: _endpoint(row[0], team_id),
        position=lambda endpoint: endpoint["id"],
    )


@blp.route("/webhook-endpoints/<endpoint_id>", methods=["GET"])
@authenticated()
@blp.response(200, EndpointSchema)
@answers(403)
def get_endpoint(endpoint_id: str) -> Any:
    """The endpoint (its secret is never shown again)."""
    managed = _managed(endpoint_id)
    return _endpoint(managed.endpoint, managed.team_id)


@blp.route("/webhook-endpoints/<endpoint_id>", methods=["PATCH"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@blp.arguments(EndpointChangeArgs)
@idempotent(first=_checked_url)
@blp.response(200, EndpointSchema)
@answers(403)
def change_endpoint(args: dict[str, Any], endpoint_id: str) -> Any:
    """Change the URL (checked as when created), the event types, or whether it is enabled
    (enabling clears `disabled_reason`; disabling fails its pending deliveries)."""
    managed = _managed(endpoint_id, for_change=True)
    endpoints.change(
        db.session,
        managed.endpoint,
        **args,
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return _endpoint(managed.endpoint, managed.team_id)


@blp.route("/webhook-endpoints/<endpoint_id>", methods=["DELETE"])
@authenticated()
@idempotent()
@blp.response(204)
@answers(403)
def delete_endpoint(endpoint_id: str) -> Any:
    """Delete the endpoint: nothing more is posted to it, its pending deliveries fail."""
    managed = _managed(endpoint_id, for_change=True)
    endpoints.delete(db.session, managed.endpoint, context=audit_context(), now=datetime.now(UTC))


@blp.route("/webhook-endpoints/<endpoint_id>/deliveries", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, page_of(DeliverySchema))
@answers(403)
def deliveries(args: dict[str, Any], endpoint_id: str) -> Any:
    """The endpoint's deliveries, newest first: each event's id and type, status, attempts,
    the last answer and the next attempt."""
    managed = _managed(endpoint_id)
    return keyset_page(
        db.session,
        endpoints.deliveries(managed.endpoint.id),
        key=WebhookDelivery.id,
        args=args,
        item=lambda row: endpoints.DeliveryStanding(row[0], row[1]),
        position=lambda standing: standing.delivery.id,
    )


@blp.route("/webhook-endpoints/<endpoint_id>/deliveries/<delivery_id>/retry", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.response(200, DeliverySchema)
@answers(403, 409)
def retry_delivery(endpoint_id: str, delivery_id: str) -> Any:
    """Send a pending or failed delivery again now, with its event's `webhook-id` (409 if it
    was delivered, or the endpoint is disabled)."""
    managed = _managed(endpoint_id, for_change=True)
    return endpoints.retry(
        db.session,
        managed.endpoint,
        delivery_id=path_id(delivery_id, "delivery_id"),
        now=datetime.now(UTC),
    )


@blp.route("/webhook-endpoints/<endpoint_id>/test", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.response(202, TestSentSchema)
@answers(403, 409)
def send_test(endpoint_id: str) -> Any:
    """Post a `webhook.test` event to this endpoint (only), signed and retried like every
    event; the delivery job sends it within seconds (409 if the endpoint is disabled)."""
    managed = _managed(endpoint_id, for_change=True)
    sent = endpoints.send_test(db.session, endpoint_id=managed.endpoint.id, now=datetime.now(UTC))
    return {"event_id": delivery.webhook_id(sent.event_id), "delivery_id": sent.delivery_id}
