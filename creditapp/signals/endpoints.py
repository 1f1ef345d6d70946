"""Webhook endpoints: where an account's events are posted, managed by whoever manages the
account (a personal account's user; a team's owner and admins).

An endpoint listens to some of the event types; its secret (`whsec_` and the base64 of 24
random bytes, as the Standard Webhooks libraries read it) signs every delivery and is shown
once, when the endpoint is made. Its URL passes the rules against server-side request forgery
(`creditapp.signals.urls`) when it is given, before any transaction (a `CheckedUrl` says it
did), and again at every delivery.

An endpoint that stops listening (disabled or deleted) gets no new event, and its pending
deliveries fail at once, saying why: nothing would ever send them, and a delivery left pending
forever would read as a backlog (one a run is posting right now is left to it, and failed by
the next run if it is still pending then). Its owner may retry any of them once it is enabled again.
A deleted endpoint is kept (its deliveries name it) but found by no one.

Someone who may not see an endpoint finds none (404), except a plain member of its team, who
is told that only the team's owner and admins manage its endpoints (403).

Locks: an endpoint to change is locked FOR NO KEY UPDATE, which leaves a ledger operation free
to add a delivery to it (the foreign key takes KEY SHARE); what stops it listening takes its
account's row first, as a ledger operation does, so that no fan-out is under way while its
pending deliveries fail (one that committed is failed with them; one that follows sees it
stopped). A team's endpoint is locked after the team's row, as a member's removal, which
disables the endpoints they made, takes them: team, endpoint, account.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Select, func, select

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.accounts.models import MANAGING_ROLES
from creditapp.database import DbSession
from creditapp.errors import (
    AlreadyDelivered,
    NotFound,
    NotTeamManager,
    TooManyWebhookEndpoints,
    ValidationFailed,
    WebhookEndpointDisabled,
)
from creditapp.ledger import alerts, outbox
from creditapp.ledger.models import Account
from creditapp.ledger.sql import LOCK_ACCOUNT, LedgerSql
from creditapp.signals import delivery, urls
from creditapp.signals.delivery import webhook_id
from creditapp.signals.models import (
    EVENT_TYPES,
    TEST_EVENT_TYPE,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24

NO_SUCH_ENDPOINT = "No such webhook endpoint."
# Endpoints an account may have (deleted ones aside): each event is posted to every listener.
MAX_ENDPOINTS = 10
NO_SUCH_DELIVERY = "No such delivery."
# An endpoint disabled because the team member who made it no longer manages the team.
CREATOR_LEFT = "creator_left"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def listened(events: Iterable[str]) -> list[str]:
    """The event types an endpoint listens to, each once, in the order of EVENT_TYPES: at
    least one, and only types that exist (the test event is sent on request, never listened
    to)."""
    given = set(events)
    unknown = sorted(given - set(EVENT_TYPES))
    if unknown:
        raise ValidationFailed(details={"events": [f"Unknown event type: {', '.join(unknown)}."]})
    if not given:
        raise ValidationFailed(details={"events": ["Name at least one event type."]})
    return [event_type for event_type in EVENT_TYPES if event_type in given]


def events_of(endpoint: WebhookEndpoint) -> list[str]:
    return endpoint.events.split(",")


def managed_account(
    session: DbSession, *, user_id: int, team_id: int | None, for_change: bool
) -> int:
    """The account whose endpoints `user_id` manages: their personal account, or the account of
    `team_id` when they are its owner or an admin (a member: 403; anyone else: 404). To
    change them, the team's row is locked, as every change of a team's management is."""
    if team_id is None:
        return accounts.of_user(session, user_id)
    if for_change:
        teams.managing(session, team_id=team_id, user_id=user_id)
    else:
        member = teams.membership(session, team_id=team_id, user_id=user_id)
        if member.role not in MANAGING_ROLES:
            raise NotTeamManager()
    return accounts.of_team(session, team_id)


def create(
    session: DbSession,
    *,
    user_id: int,
    account_id: int,
    url: urls.CheckedUrl,
    events: Iterable[str],
    context: ledger.AuditContext,
    now: datetime,
) -> WebhookEndpoint:
    """A new, enabled endpoint of `account_id` (which `user_id` manages: `managed_account`),
    with a new secret; the account is watched from now on."""
    types = listened(events)
    # The account's row locked first, as a ledger operation locks it: two creations at once
    # count one after the other.
    LedgerSql(session).one(LOCK_ACCOUNT, account=account_id)
    existing = session.scalar(select(func.count()).select_from(of_account(account_id).subquery()))
    if existing is not None and existing >= MAX_ENDPOINTS:
        raise TooManyWebhookEndpoints()
    endpoint = WebhookEndpoint(
        account_id=account_id,
        created_by=user_id,
        url=url.url,
        events=",".join(types),
        secret=new_secret(),
        enabled=True,
        disabled_reason=None,
        created_at=now,
    )
    session.add(endpoint)
    session.flush()
    alerts.watch(LedgerSql(session), account_id=account_id)
    _audit(
        session,
        endpoint,
        "webhook_endpoint_created",
        context=context,
        now=now,
        url_host=_host(endpoint.url),
        events=endpoint.events,
    )
    return endpoint


def of_account(account_id: int) -> Select[WebhookEndpoint]:
    """The account's endpoints but the deleted ones (page them by id)."""
    return select(WebhookEndpoint).where(
        WebhookEndpoint.account_id == account_id, WebhookEndpoint.deleted_at.is_(None)
    )


@dataclass(frozen=True)
class Managed:
    """An endpoint, and the team whose account it is of (None: a personal account's)."""

    endpoint: WebhookEndpoint
    team_id: int | None


def get(session: DbSession, *, endpoint_id: int, user_id: int, for_change: bool = False) -> Managed:
    """An endpoint `user_id` manages (see `managed_account`); to change it, its row is
    locked (FOR NO KEY UPDATE: see the module's "Locks") and read as the database has it now (a
    concurrent delete is seen), after its team's row when it is a team's."""
    query = (
        select(WebhookEndpoint, Account.user_id, Account.team_id)
        .join(Account, Account.id == WebhookEndpoint.account_id)
        .where(WebhookEndpoint.id == endpoint_id)
    )
    found = session.execute(query).one_or_none()
    if found is None:
        raise NotFound(NO_SUCH_ENDPOINT)
    endpoint, owner_id, team_id = found
    if endpoint.deleted_at is not None or (team_id is None and owner_id != user_id):
        raise NotFound(NO_SUCH_ENDPOINT)
    if team_id is not None:
        try:
            managed_account(session, user_id=user_id, team_id=team_id, for_change=for_change)
        except NotFound:
            raise NotFound(NO_SUCH_ENDPOINT) from None
    if for_change:
        endpoint = session.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        ).scalar_one()
        if endpoint.deleted_at is not None:  # deleted meanwhile
            raise NotFound(NO_SUCH_ENDPOINT)
    return Managed(endpoint, team_id)


def change(
    session: DbSession,
    endpoint: WebhookEndpoint,
    *,
    url: urls.CheckedUrl | None = None,
    events: Iterable[str] | None = None,
    enabled: bool | None = None,
    context: ledger.AuditContext,
    now: datetime,
    disabled_reason: str | None = None,
) -> WebhookEndpoint:
    """Change what is given (None: unchanged). Enabling clears why the service had disabled it;
    disabling fails its pending deliveries (`disabled_reason`: why the service disables it)."""
    if enabled is False and endpoint.enabled:
        _lock_account(session, endpoint)
    changed: list[str] = []
    # Where the events went before and where they go now, by host (a path may hold the
    # receiver's token): a URL moved to another server and back leaves that in the trail.
    was: dict[str, str] = {}
    if url is not None and url.url != endpoint.url:
        was.update(url_host_before=_host(endpoint.url), url_host=_host(url.url))
        endpoint.url = url.url
        changed.append("url")
    if events is not None:
        types = ",".join(listened(events))
        if types != endpoint.events:
            was.update(events_before=endpoint.events, events=types)
            endpoint.events = types
            changed.append("events")
    if enabled is not None and enabled != endpoint.enabled:
        endpoint.enabled = enabled
        endpoint.disabled_reason = None if enabled else disabled_reason
        changed.append("enabled")
        if not enabled:
            if disabled_reason:
                was["disabled_reason"] = disabled_reason
            delivery.fail_pending(
                session, endpoint_id=endpoint.id, reason="The endpoint was disabled.", now=now
            )
    session.flush()
    if changed:
        _audit(
            session,
            endpoint,
            "webhook_endpoint_changed",
            context=context,
            now=now,
            changed=",".join(changed),
            **was,
        )
    return endpoint


def delete(
    session: DbSession, endpoint: WebhookEndpoint, *, context: ledger.AuditContext, now: datetime
) -> None:
    """Delete the endpoint (kept, found by no one): its pending deliveries fail; its account is
    no longer watched for it."""
    _lock_account(session, endpoint)
    endpoint.deleted_at = now
    session.flush()
    delivery.fail_pending(
        session, endpoint_id=endpoint.id, reason="The endpoint was deleted.", now=now
    )
    alerts.watch(LedgerSql(session), account_id=endpoint.account_id)
    _audit(session, endpoint, "webhook_endpoint_deleted", context=context, now=now)


def stop_of_former_manager(
    session: DbSession,
    *,
    team_id: int,
    user_id: int,
    context: ledger.AuditContext,
    now: datetime,
) -> None:
    """Disable the team's endpoints `user_id` made, in the transaction that removes them from
    the team or makes them a plain member (`disabled_reason` `creator_left`): their URL is the
    one they chose, perhaps their own server, and the team's events (balances, purchases,
    members' caps) are no longer theirs to see. The team's managers may enable them again."""
    account_id = accounts.of_team(session, team_id)
    # All of them locked first, in id order, then the account (by the first `change`): an
    # endpoint before its account, as everywhere (module docstring, "Locks").
    made = session.scalars(
        of_account(account_id)
        .where(WebhookEndpoint.created_by == user_id, WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookEndpoint.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).all()
    for endpoint in made:
        change(
            session,
            endpoint,
            enabled=False,
            context=context,
            now=now,
            disabled_reason=CREATOR_LEFT,
        )


def _host(url: str) -> str:
    """A URL's host (and port) for the audit trail: its path may hold the receiver's token."""
    return urlsplit(url).netloc


def _lock_account(session: DbSession, endpoint: WebhookEndpoint) -> None:
    LedgerSql(session).one(LOCK_ACCOUNT, account=endpoint.account_id)


def deliveries(endpoint_id: int) -> Select[WebhookDelivery, str]:
    """The endpoint's deliveries with their event's type (page them by id)."""
    return (
        select(WebhookDelivery, WebhookEvent.type)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    )


@dataclass(frozen=True)
class DeliveryStanding:
    """A delivery as its endpoint's owner sees it: with its event's type and `webhook-id`."""

    delivery: WebhookDelivery
    type: str

    @property
    def event_id(self) -> str:
        return webhook_id(self.delivery.event_id)


def delivery_of(session: DbSession, *, endpoint_id: int, delivery_id: int) -> DeliveryStanding:
    found = session.execute(
        deliveries(endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if found is None:
        raise NotFound(NO_SUCH_DELIVERY)
    return DeliveryStanding(found[0], found[1])


def _listening(endpoint: WebhookEndpoint) -> None:
    """A delivery to a disabled endpoint would never be sent."""
    if not endpoint.enabled:
        raise WebhookEndpointDisabled()


def retry(
    session: DbSession, endpoint: WebhookEndpoint, *, delivery_id: int, now: datetime
) -> DeliveryStanding:
    """Send a failed or pending delivery of the endpoint again, now (with its event's
    `webhook-id`, as every attempt). A delivered one is not sent twice (409)."""
    _listening(endpoint)
    found = delivery_of(session, endpoint_id=endpoint.id, delivery_id=delivery_id)
    if found.delivery.status == "delivered":
        raise AlreadyDelivered()
    delivery.retry(session, delivery_id=delivery_id, now=now)
    session.flush()
    return delivery_of(session, endpoint_id=endpoint.id, delivery_id=delivery_id)


@dataclass(frozen=True)
class TestSent:
    event_id: int
    delivery_id: int


def send_test(session: DbSession, *, endpoint_id: int, now: datetime) -> TestSent:
    """A `webhook.test` event to this endpoint only (its owner's "send a test event"), through
    the outbox as every event: it is delivered, signed and retried as they are."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(NO_SUCH_ENDPOINT)
    _listening(endpoint)
    event_id = outbox.emit(
        LedgerSql(session),
        account_id=endpoint.account_id,
        event_type=TEST_EVENT_TYPE,
        data={"endpoint_id": str(endpoint_id)},
        now=now,
        endpoint_id=endpoint_id,
    )
    delivery_id = session.execute(
        select(WebhookDelivery.id).where(
            WebhookDelivery.event_id == event_id, WebhookDelivery.endpoint_id == endpoint_id
        )
    ).scalar_one()
    return TestSent(event_id, delivery_id)


def _audit(
    session: DbSession,
    endpoint: WebhookEndpoint,
    action: str,
    *,
    context: ledger.AuditContext,
    now: datetime,
    **details: str,
) -> None:
    ledger.record_action(
        session,
        action=action,
        context=context,
        now=now,
        account_id=endpoint.account_id,
        details={"endpoint_id": str(endpoint.id), **details},
    )
