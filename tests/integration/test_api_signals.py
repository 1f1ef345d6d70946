"""Signals out over HTTP (contract section 8, "Signals out"): alert thresholds set and read for
a person and a team, a threshold crossed down by a ledger operation writing `balance.low` for
the endpoints that listen to it only, webhook endpoints made (the secret shown once, never
replayed), listed, changed and deleted by who manages them, the URL rules at registration and
on change, the delivery log, a manual retry and a test event."""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.idempotency import IdempotencyKey
from creditapp.ledger import alerts
from creditapp.ledger.models import Account, AuditRecord
from creditapp.money import format_credits
from creditapp.signals import endpoints, urls
from creditapp.signals.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.helpers import ADJUST, assert_error, new_endpoint, scalar, until, waits_for_a_lock

CR = 1_000_000
ALERTS = "/api/credit/alerts"
ENDPOINTS = "/api/webhook-endpoints"
TEAMS = "/api/teams"
# Nothing is posted in these tests (no delivery job runs): any loopback URL will do.
HOOK = "http://127.0.0.1:9/hook"
# Clocks of the test and of the database's timestamps agree to within this.
_SLACK = timedelta(seconds=1)
SECRET_SHAPE = re.compile(r"^whsec_[A-Za-z0-9+/]{32}$")
ENDPOINT_FIELDS = {"id", "url", "events", "enabled", "disabled_reason", "team_id", "created_at"}
DELIVERY_FIELDS = {
    "id",
    "event_id",
    "type",
    "status",
    "attempts",
    "last_status",
    "last_error",
    "next_attempt_at",
    "last_attempt_at",
    "delivered_at",
    "created_at",
}


def with_key(person: Person, key: str | None = None) -> dict[str, str]:
    return {**person.headers, "Idempotency-Key": key or secrets.token_hex(8)}


def set_alerts(client: FlaskClient, person: Person, body: Any) -> Any:
    return client.put(ALERTS, json=body, headers=with_key(person))


def make_endpoint(client: FlaskClient, person: Person, **body: Any) -> dict[str, Any]:
    response = client.post(
        ENDPOINTS, json={"url": HOOK, "events": ["balance.low"], **body}, headers=with_key(person)
    )
    assert response.status_code == 201, response.get_json()
    made: dict[str, Any] = response.get_json()
    return made


def audited_details(app: Flask, action: str) -> list[dict[str, Any]]:
    """The details of every audit record of `action`, oldest first."""
    with app.app_context():
        found = db.session.scalars(
            select(AuditRecord.details).where(AuditRecord.action == action).order_by(AuditRecord.id)
        ).all()
        db.session.remove()
    return list(found)


def endpoint_path(endpoint: dict[str, Any], tail: str = "") -> str:
    return f"{ENDPOINTS}/{endpoint['id']}{tail}"


def make_team(client: FlaskClient, owner: Person, **members: Person) -> str:
    """A team of `owner`, with each member added in the role it is named by (`admin=...`,
    `member=...`)."""
    made = client.post(TEAMS, json={"name": "Ours"}, headers=with_key(owner))
    assert made.status_code == 201, made.get_json()
    team_id: str = made.get_json()["id"]
    for role, person in members.items():
        added = client.post(
            f"{TEAMS}/{team_id}/members",
            json={"email": person.email, "role": role},
            headers=with_key(owner),
        )
        assert added.status_code == 201, added.get_json()
    return team_id


def adjust(client: FlaskClient, admin: Person, person: Person, amount: str) -> None:
    response = client.post(
        ADJUST,
        json={"user_id": str(person.id), "amount": amount, "reason": "tests"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.get_json()


def events(app: Flask) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the outbox as (type, data), oldest first."""
    with app.app_context():
        rows = db.session.execute(
            select(WebhookEvent.type, WebhookEvent.data).order_by(WebhookEvent.id)
        ).all()
        db.session.remove()
    return [(row[0], row[1]) for row in rows]


def deliveries(app: Flask) -> list[tuple[int, int, str]]:
    """Every delivery as (event id, endpoint id, status), oldest first."""
    with app.app_context():
        rows = db.session.execute(
            select(
                WebhookDelivery.event_id, WebhookDelivery.endpoint_id, WebhookDelivery.status
            ).order_by(WebhookDelivery.id)
        ).all()
        db.session.remove()
    return [(row[0], row[1], row[2]) for row in rows]


def watched(app: Flask, account_id: int) -> bool:
    return bool(scalar(app, select(Account.watched).where(Account.id == account_id)))


def set_delivery(app: Flask, delivery_id: str, **values: Any) -> None:
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == int(delivery_id))
                .values(**values)
            )
        db.session.remove()


# 1. Alert thresholds


def test_thresholds_are_set_and_read_lowest_first_armed_unless_already_below(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory(credits=50 * CR)
    response = set_alerts(client, person, {"thresholds": ["100", "5.5", 20, "20"]})
    assert response.status_code == 200, response.get_json()
    expected = {
        "thresholds": [
            {"threshold": "5.5", "armed": True},
            {"threshold": "20", "armed": True},
            {"threshold": "100", "armed": False},
        ],
        "team_id": None,
    }
    assert response.get_json() == expected
    assert client.get(ALERTS, headers=person.headers).get_json() == expected
    assert watched(app, person.account_id)

    cleared = set_alerts(client, person, {"thresholds": []})
    assert cleared.get_json() == {"thresholds": [], "team_id": None}
    assert client.get(ALERTS, headers=person.headers).get_json() == cleared.get_json()
    assert not watched(app, person.account_id)
    # Each change is audited with what the thresholds were and what they are.
    assert audited_details(app, "alert_thresholds_set") == [
        {"before": [], "after": ["5.5", "20", "100"]},
        {"before": ["5.5", "20", "100"], "after": []},
    ]


def test_a_teams_thresholds_are_set_by_its_managers_and_read_by_its_members(
    client: FlaskClient, person_factory: Any
) -> None:
    owner, admin, member, stranger = (person_factory() for _ in range(4))
    team_id = make_team(client, owner, admin=admin, member=member)

    for manager, amount in ((owner, "10"), (admin, "12.5")):
        response = set_alerts(client, manager, {"thresholds": [amount], "team_id": team_id})
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {
            "thresholds": [{"threshold": amount, "armed": False}],
            "team_id": team_id,
        }
    expected = {"thresholds": [{"threshold": "12.5", "armed": False}], "team_id": team_id}
    for reader in (owner, admin, member):
        read = client.get(ALERTS, query_string={"team_id": team_id}, headers=reader.headers)
        assert read.get_json() == expected
    # The personal thresholds are another account's.
    assert client.get(ALERTS, headers=owner.headers).get_json() == {
        "thresholds": [],
        "team_id": None,
    }

    refused = set_alerts(client, member, {"thresholds": ["1"], "team_id": team_id})
    assert_error(refused, 403, "team_managers_only")
    for team in (team_id, str(int(team_id) + 1000)):
        assert_error(
            set_alerts(client, stranger, {"thresholds": ["1"], "team_id": team}), 404, "not_found"
        )
        assert_error(
            client.get(ALERTS, query_string={"team_id": team}, headers=stranger.headers),
            404,
            "not_found",
        )
    read = client.get(ALERTS, query_string={"team_id": team_id}, headers=owner.headers)
    assert read.get_json() == expected


@pytest.mark.parametrize(
    "raw",
    [
        "[-5]",
        "[0]",
        '["0"]',
        '["-1"]',
        '["1.0000001"]',
        '["1e3"]',
        "[1.5]",
        "[true]",
        "[null]",
        '["NaN"]',
        '["\\u0000"]',
        '["\\ud800"]',
        '"5"',
        "{}",
        "null",
        '["' + "9" * 5000 + '"]',
        "[" + "9" * 5000 + "]",
        "[" + ", ".join(str(amount) for amount in range(1, 12)) + "]",
        "[" + ", ".join(["1"] * 20_000) + "]",
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(
    client: FlaskClient, person_factory: Any, raw: str
) -> None:
    person = person_factory()
    set_alerts(client, person, {"thresholds": ["7"]})
    response = client.put(
        ALERTS,
        data='{"thresholds": ' + raw + "}",
        content_type="application/json",
        headers=with_key(person),
    )
    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == ["thresholds"]
    assert len(json.dumps(error)) < 2000  # one message for a list, not one per item
    assert client.get(ALERTS, headers=person.headers).get_json()["thresholds"] == [
        {"threshold": "7", "armed": False}
    ]


def test_a_bad_team_id_or_none_at_all_is_refused(client: FlaskClient, person_factory: Any) -> None:
    person = person_factory()
    for team_id in ("9" * 5000, "\u0661", -1, "x\u0000"):
        body = {"thresholds": ["1"], "team_id": team_id}
        assert list(
            assert_error(set_alerts(client, person, body), 400, "validation_error")["details"]
        ) == ["team_id"]
    assert list(
        assert_error(set_alerts(client, person, {"team_id": None}), 400, "validation_error")[
            "details"
        ]
    ) == ["thresholds"]
    query = client.get(ALERTS, query_string={"team_id": "9" * 5000}, headers=person.headers)
    assert list(assert_error(query, 400, "validation_error")["details"]) == ["team_id"]


amounts = st.integers(min_value=1, max_value=1_000_000_000 * CR)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chosen=st.lists(amounts, max_size=10), spelled=st.lists(st.booleans(), max_size=10))
def test_any_ten_amounts_are_kept_exactly_as_sent(
    client: FlaskClient, person_factory: Any, chosen: list[int], spelled: list[bool]
) -> None:
    person = person_factory()
    # Each amount as a decimal string, or as a JSON integer where it is whole credits.
    wire = [
        int(amount // CR) if amount % CR == 0 and as_integer else format_credits(amount)
        for amount, as_integer in zip(chosen, spelled + [False] * len(chosen), strict=False)
    ]
    response = set_alerts(client, person, {"thresholds": wire})
    assert response.status_code == 200, response.get_json()
    assert [row["threshold"] for row in response.get_json()["thresholds"]] == [
        format_credits(amount) for amount in sorted(set(chosen))
    ]


def test_a_threshold_crossed_down_writes_balance_low_for_the_endpoints_listening_to_it(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    person = person_factory(credits=100 * CR)
    low = make_endpoint(client, person, events=["balance.depleted", "balance.low"])
    depleted_only = make_endpoint(client, person, events=["balance.depleted"])
    set_alerts(client, person, {"thresholds": ["50", "80"]})

    adjust(client, admin, person, "-60")

    [(kind, data), (other_kind, other_data)] = events(app)
    account = {"account_id": str(person.account_id), "user_id": str(person.id)}
    # One event per threshold crossed, the highest first.
    assert (kind, data) == ("balance.low", {**account, "threshold": "80", "available": "40"})
    assert (other_kind, other_data) == (
        "balance.low",
        {**account, "threshold": "50", "available": "40"},
    )
    event_ids = [int(item["event_id"].removeprefix("evt_")) for item in _log(client, person, low)]
    assert deliveries(app) == [
        (event_ids[1], int(low["id"]), "pending"),
        (event_ids[0], int(low["id"]), "pending"),
    ]
    assert _log(client, person, depleted_only) == []

    # Not again while below; re-armed above, crossed again below.
    adjust(client, admin, person, "-1")
    assert len(events(app)) == 2
    adjust(client, admin, person, "20")
    adjust(client, admin, person, "-20")
    assert [data["threshold"] for _, data in events(app)] == ["80", "50", "50"]
    assert client.get(ALERTS, headers=person.headers).get_json()["thresholds"] == [
        {"threshold": "50", "armed": False},
        {"threshold": "80", "armed": False},
    ]


def test_a_transfer_to_a_team_crosses_the_personal_threshold(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner = person_factory(credits=10 * CR)
    team_id = make_team(client, owner)
    make_endpoint(client, owner)
    set_alerts(client, owner, {"thresholds": ["5"]})
    moved = client.post(
        f"{TEAMS}/{team_id}/transfers", json={"amount": "6"}, headers=with_key(owner)
    )
    assert moved.status_code == 201, moved.get_json()
    assert events(app) == [
        (
            "balance.low",
            {
                "account_id": str(owner.account_id),
                "user_id": str(owner.id),
                "threshold": "5",
                "available": "4",
            },
        )
    ]


def _log(client: FlaskClient, person: Person, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(endpoint_path(endpoint, "/deliveries"), headers=person.headers)
    assert response.status_code == 200, response.get_json()
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


# 2. Webhook endpoints


def test_an_endpoint_is_made_with_a_secret_shown_once(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    assert not watched(app, person.account_id)
    made = make_endpoint(
        client, person, url="https://example.test/hooks", events=["grant.expiring", "balance.low"]
    )
    assert set(made) == ENDPOINT_FIELDS | {"secret"}
    assert made["url"] == "https://example.test/hooks"
    # Each type once, in the order the contract lists them.
    assert made["events"] == ["balance.low", "grant.expiring"]
    assert (made["enabled"], made["disabled_reason"], made["team_id"]) == (True, None, None)
    assert made["created_at"].endswith("Z")
    assert SECRET_SHAPE.match(made["secret"]), made["secret"]
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 24
    # The secret signs as the Standard Webhooks libraries read it.
    signer = Webhook(made["secret"])
    moment = datetime.now(UTC)
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signer.sign("evt_1", moment, '{"type": "balance.low"}'),
    }
    assert signer.verify('{"type": "balance.low"}', headers) == {"type": "balance.low"}
    assert watched(app, person.account_id)

    shown = {key: value for key, value in made.items() if key != "secret"}
    got = client.get(endpoint_path(made), headers=person.headers)
    assert got.status_code == 200
    assert got.get_json() == shown
    listed = client.get(ENDPOINTS, headers=person.headers).get_json()
    assert listed == {"items": [shown], "next_cursor": None}
    other = make_endpoint(client, person)
    assert other["secret"] != made["secret"]


def test_a_retried_creation_answers_the_same_endpoint_without_its_secret(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    key = secrets.token_hex(8)
    body = {"url": HOOK, "events": ["balance.low"]}
    first = client.post(ENDPOINTS, json=body, headers=with_key(person, key))
    assert first.status_code == 201
    again = client.post(ENDPOINTS, json=body, headers=with_key(person, key))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    made = first.get_json()
    assert again.get_json() == {k: v for k, v in made.items() if k != "secret"}
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1
    with app.app_context():
        stored = db.session.scalars(select(IdempotencyKey.response_body)).all()
        db.session.remove()
    assert stored and all(made["secret"].encode() not in (body or b"") for body in stored)


def test_a_retry_is_replayed_even_if_the_host_no_longer_resolves(
    app: Flask, client: FlaskClient, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A creation or a change that succeeded answers its retry with its response: the URL is
    checked only for a request that runs. The system's resolver is the boundary here."""
    person = person_factory()
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    resolvable = {"https://hooks.example.com/a": "93.184.215.14"}

    def resolver(host: str, port: Any, *_args: Any, **_kwargs: Any) -> Any:
        for url, address in resolvable.items():
            if host == url.split("/")[2]:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(urls.socket, "getaddrinfo", resolver)
    create_key, change_key = secrets.token_hex(8), secrets.token_hex(8)
    body = {"url": "https://hooks.example.com/a", "events": ["balance.low"]}
    made = client.post(ENDPOINTS, json=body, headers=with_key(person, create_key))
    assert made.status_code == 201
    resolvable["https://hooks.example.com/b"] = "93.184.215.15"
    change = {"url": "https://hooks.example.com/b"}
    changed = client.patch(
        endpoint_path(made.get_json()), json=change, headers=with_key(person, change_key)
    )
    assert changed.status_code == 200 and changed.get_json()["url"] == change["url"]

    resolvable.clear()  # neither host resolves any more
    again = client.post(ENDPOINTS, json=body, headers=with_key(person, create_key))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == {k: v for k, v in made.get_json().items() if k != "secret"}
    changed_again = client.patch(
        endpoint_path(made.get_json()), json=change, headers=with_key(person, change_key)
    )
    assert changed_again.status_code == 200
    assert changed_again.headers["Idempotent-Replayed"] == "true"
    assert changed_again.get_json() == changed.get_json()
    # A request that runs is checked: refused, with nothing saved and its key free again.
    new_key = secrets.token_hex(8)
    for _ in range(2):
        refused = client.post(ENDPOINTS, json=body, headers=with_key(person, new_key))
        assert_error(refused, 400, "webhook_url_refused")
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1


def test_endpoints_are_listed_newest_first_a_page_at_a_time(
    client: FlaskClient, person_factory: Any
) -> None:
    person, other = person_factory(), person_factory()
    made = [make_endpoint(client, person)["id"] for _ in range(3)]
    make_endpoint(client, other)
    first = client.get(ENDPOINTS, query_string={"limit": 2}, headers=person.headers).get_json()
    assert [item["id"] for item in first["items"]] == [made[2], made[1]]
    rest = client.get(
        ENDPOINTS,
        query_string={"limit": 2, "cursor": first["next_cursor"]},
        headers=person.headers,
    ).get_json()
    assert [item["id"] for item in rest["items"]] == [made[0]]
    assert rest["next_cursor"] is None
    assert all("secret" not in item for item in first["items"] + rest["items"])


def test_an_endpoint_is_changed_and_enabling_it_clears_why_it_was_disabled(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    made = make_endpoint(client, person)
    path = endpoint_path(made)
    changed = client.patch(
        path,
        json={"url": "http://127.0.0.1:10/other", "events": ["purchase.completed"] * 3},
        headers=with_key(person),
    )
    assert changed.status_code == 200, changed.get_json()
    assert set(changed.get_json()) == ENDPOINT_FIELDS
    assert changed.get_json()["url"] == "http://127.0.0.1:10/other"
    assert changed.get_json()["events"] == ["purchase.completed"]
    # The audit trail says where the events went, before and after.
    created, moved = audited_details(app, "webhook_endpoint_created") + audited_details(
        app, "webhook_endpoint_changed"
    )
    # Hosts, not whole URLs: a receiver's path may hold its token.
    assert created == {
        "endpoint_id": made["id"],
        "url_host": "127.0.0.1:9",
        "events": ",".join(made["events"]),
    }
    assert moved == {
        "endpoint_id": made["id"],
        "changed": "url,events",
        "url_host_before": "127.0.0.1:9",
        "url_host": "127.0.0.1:10",
        "events_before": ",".join(made["events"]),
        "events": "purchase.completed",
    }

    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == int(made["id"]))
                .values(enabled=False, disabled_reason="gone")
            )
        db.session.remove()
    assert client.get(path, headers=person.headers).get_json()["disabled_reason"] == "gone"
    enabled = client.patch(path, json={"enabled": True}, headers=with_key(person))
    assert (enabled.get_json()["enabled"], enabled.get_json()["disabled_reason"]) == (True, None)
    disabled = client.patch(path, json={"enabled": False}, headers=with_key(person))
    assert (disabled.get_json()["enabled"], disabled.get_json()["disabled_reason"]) == (
        False,
        None,
    )
    unchanged = client.patch(path, json={}, headers=with_key(person))
    assert unchanged.get_json() == disabled.get_json()


def test_a_disabled_or_deleted_endpoint_is_sent_nothing_and_its_pending_deliveries_fail(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    person = person_factory(credits=10 * CR)
    kept, disabled, deleted = (make_endpoint(client, person) for _ in range(3))
    set_alerts(client, person, {"thresholds": ["9"]})
    adjust(client, admin, person, "-2")  # one event, a delivery to each endpoint
    assert [status for _, _, status in deliveries(app)] == ["pending"] * 3

    assert (
        client.patch(
            endpoint_path(disabled), json={"enabled": False}, headers=with_key(person)
        ).status_code
        == 200
    )
    deleting = client.delete(endpoint_path(deleted), headers=with_key(person))
    assert deleting.status_code == 204 and deleting.get_data() == b""

    [entry] = _log(client, person, disabled)
    assert (entry["status"], entry["next_attempt_at"]) == ("failed", None)
    assert entry["last_error"] == "The endpoint was disabled."
    assert [row[2] for row in deliveries(app) if row[1] == int(kept["id"])] == ["pending"]
    assert [row[2] for row in deliveries(app) if row[1] == int(deleted["id"])] == ["failed"]
    assert_error(client.get(endpoint_path(deleted), headers=person.headers), 404, "not_found")
    listed = client.get(ENDPOINTS, headers=person.headers).get_json()["items"]
    assert [item["id"] for item in listed] == [disabled["id"], kept["id"]]
    for method in ("PATCH", "DELETE"):
        gone = client.open(endpoint_path(deleted), method=method, json={}, headers=with_key(person))
        assert_error(gone, 404, "not_found")

    # The next event reaches the enabled endpoint only.
    adjust(client, admin, person, "5")
    adjust(client, admin, person, "-5")
    latest = deliveries(app)[-1][0]
    assert [row[1:] for row in deliveries(app) if row[0] == latest] == [
        (int(kept["id"]), "pending")
    ]


def test_the_last_endpoint_deleted_and_no_thresholds_leave_the_account_unwatched(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    first, second = make_endpoint(client, person), make_endpoint(client, person)
    client.delete(endpoint_path(first), headers=with_key(person))
    assert watched(app, person.account_id)
    client.delete(endpoint_path(second), headers=with_key(person))
    assert not watched(app, person.account_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["balance.low"]}, "url"),
        ({"url": HOOK}, "events"),
        ({"url": HOOK, "events": []}, "events"),
        ({"url": HOOK, "events": ["balance.lower"]}, "events"),
        ({"url": HOOK, "events": ["webhook.test"]}, "events"),
        ({"url": HOOK, "events": "balance.low"}, "events"),
        ({"url": HOOK, "events": [5]}, "events"),
        ({"url": HOOK, "events": ["balance.low\u0000"]}, "events"),
        ({"url": HOOK, "events": ["balance.low"] * 1000}, "events"),
        ({"url": "", "events": ["balance.low"]}, "url"),
        ({"url": "   ", "events": ["balance.low"]}, "url"),
        ({"url": HOOK + "\u0000", "events": ["balance.low"]}, "url"),
        ({"url": "http://127.0.0.1/" + "a" * 2048, "events": ["balance.low"]}, "url"),
        ({"url": 5, "events": ["balance.low"]}, "url"),
        ({"url": HOOK, "events": ["balance.low"], "team_id": "9" * 5000}, "team_id"),
        ({"url": HOOK, "events": ["balance.low"], "secret": "whsec_mine"}, "secret"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_field(
    app: Flask, client: FlaskClient, person_factory: Any, body: dict[str, Any], field: str
) -> None:
    person = person_factory()
    response = client.post(ENDPOINTS, json=body, headers=with_key(person))
    assert list(assert_error(response, 400, "validation_error")["details"]) == [field]
    made = make_endpoint(client, person)
    change = {key: value for key, value in body.items() if key != "team_id"}
    changed = client.patch(endpoint_path(made), json=change, headers=with_key(person))
    if field in change:
        assert list(assert_error(changed, 400, "validation_error")["details"]) == [field]
    else:  # a change names only what it changes
        assert changed.status_code == 200, changed.get_json()
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1


@pytest.mark.parametrize("enabled", [1, "true", None, [True]])
def test_enabled_is_a_json_boolean(client: FlaskClient, person_factory: Any, enabled: Any) -> None:
    person = person_factory()
    path = endpoint_path(make_endpoint(client, person))
    response = client.patch(path, json={"enabled": enabled}, headers=with_key(person))
    assert list(assert_error(response, 400, "validation_error")["details"]) == ["enabled"]
    assert client.get(path, headers=person.headers).get_json()["enabled"] is True


def test_a_lone_surrogate_in_a_url_is_refused(client: FlaskClient, person_factory: Any) -> None:
    person = person_factory()
    response = client.post(
        ENDPOINTS,
        data='{"url": "http://127.0.0.1/\\ud800", "events": ["balance.low"]}',
        content_type="application/json",
        headers=with_key(person),
    )
    assert list(assert_error(response, 400, "validation_error")["details"]) == ["url"]


REFUSED_URLS = [
    "http://1.1.1.1/hook",  # https only
    "https://127.0.0.1/hook",
    "https://[::1]/hook",
    "https://10.1.2.3/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://localhost/hook",
    "https://user:pass@1.1.1.1/hook",
    "ftp://1.1.1.1/hook",
    "https:///hook",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_unsafe_urls_are_refused_when_private_addresses_are_not_allowed(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
) -> None:
    person = person_factory()
    made = make_endpoint(client, person)
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    refused = client.post(
        ENDPOINTS, json={"url": url, "events": ["balance.low"]}, headers=with_key(person)
    )
    assert_error(refused, 400, "webhook_url_refused")
    changed = client.patch(endpoint_path(made), json={"url": url}, headers=with_key(person))
    assert_error(changed, 400, "webhook_url_refused")
    assert client.get(endpoint_path(made), headers=person.headers).get_json()["url"] == HOOK
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1

    public = "https://1.1.1.1/hook"
    accepted = client.patch(endpoint_path(made), json={"url": public}, headers=with_key(person))
    assert accepted.status_code == 200 and accepted.get_json()["url"] == public
    assert make_endpoint(client, person, url=public)["url"] == public
    # A change that leaves the URL alone does not check it again.
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(update(WebhookEndpoint).values(url=HOOK))
        db.session.remove()
    events_only = client.patch(
        endpoint_path(made), json={"events": ["balance.depleted"]}, headers=with_key(person)
    )
    assert events_only.status_code == 200, events_only.get_json()


def test_a_refused_host_is_not_told_what_it_resolves_to(
    app: Flask, client: FlaskClient, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever may add an endpoint must not learn the addresses of the service's own network."""
    person = person_factory()
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    for url in ("https://localhost/hook", "https://10.1.2.3/hook"):
        refused = client.post(
            ENDPOINTS, json={"url": url, "events": ["balance.low"]}, headers=with_key(person)
        )
        error = assert_error(refused, 400, "webhook_url_refused")
        assert error["message"] == urls.NOT_PUBLIC
        assert error["details"] == {"url": url}


def test_a_host_of_non_ascii_letters_is_kept_in_its_idna_form(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    """The Host header and TLS name a host in ASCII: saved as given, it could never be sent."""
    person = person_factory()
    made = make_endpoint(client, person, url="http://b\u00fccher.example:8080/hook?q=1")
    assert made["url"] == "http://xn--bcher-kva.example:8080/hook?q=1"
    changed = client.patch(
        endpoint_path(made),
        json={"url": "http://\u00e9x\u00e4mple\u3002com/h"},
        headers=with_key(person),
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["url"] == "http://xn--xmple-gra7a.com/h"
    assert client.get(endpoint_path(made), headers=person.headers).get_json()["url"] == (
        "http://xn--xmple-gra7a.com/h"
    )
    assert scalar(app, select(WebhookEndpoint.url)) == "http://xn--xmple-gra7a.com/h"

    too_long = "http://" + "\u00e9" * 64 + ".example/hook"  # a label is at most 63 octets
    refused = client.post(
        ENDPOINTS, json={"url": too_long, "events": ["balance.low"]}, headers=with_key(person)
    )
    error = assert_error(refused, 400, "webhook_url_refused")
    assert error["message"] == "The webhook URL is refused: its host is not a valid domain name."
    assert error["details"] == {"url": too_long}
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1


# 3. Who may see and change an endpoint


def test_another_users_endpoint_is_not_found(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner, stranger = person_factory(), person_factory()
    made = make_endpoint(client, owner)
    client.post(endpoint_path(made, "/test"), headers=with_key(owner))
    assert len(deliveries(app)) == 1
    delivery_id = _log(client, owner, made)[0]["id"]
    for endpoint_id in (made["id"], str(int(made["id"]) + 1000)):
        path = f"{ENDPOINTS}/{endpoint_id}"
        for method, tail, body in _endpoint_operations(delivery_id):
            response = client.open(
                path + tail, method=method, json=body, headers=with_key(stranger)
            )
            assert_error(response, 404, "not_found")
    assert client.get(ENDPOINTS, headers=stranger.headers).get_json()["items"] == []
    assert client.get(endpoint_path(made), headers=owner.headers).get_json()["enabled"] is True
    assert len(deliveries(app)) == 1


def _endpoint_operations(delivery_id: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", "", None),
        ("PATCH", "", {"enabled": False}),
        ("DELETE", "", None),
        ("GET", "/deliveries", None),
        ("POST", f"/deliveries/{delivery_id}/retry", None),
        ("POST", "/test", None),
    ]


def test_a_teams_endpoints_are_managed_by_its_owner_and_admins_only(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner, admin, member, stranger = (person_factory() for _ in range(4))
    team_id = make_team(client, owner, admin=admin, member=member)
    made = make_endpoint(client, admin, team_id=team_id)
    assert made["team_id"] == team_id
    with app.app_context():
        team_account = db.session.execute(
            select(Account.id, Account.watched).where(Account.team_id == int(team_id))
        ).one()
        db.session.remove()
    assert team_account.watched
    shown = {key: value for key, value in made.items() if key != "secret"}
    for manager in (owner, admin):
        assert client.get(endpoint_path(made), headers=manager.headers).get_json() == shown
        listed = client.get(ENDPOINTS, query_string={"team_id": team_id}, headers=manager.headers)
        assert listed.get_json()["items"] == [shown]
    # Not among the owner's own endpoints.
    assert client.get(ENDPOINTS, headers=owner.headers).get_json()["items"] == []

    sent = client.post(endpoint_path(made, "/test"), headers=with_key(owner))
    delivery_id = sent.get_json()["delivery_id"]
    for method, tail, body in _endpoint_operations(delivery_id):
        response = client.open(
            endpoint_path(made, tail), method=method, json=body, headers=with_key(member)
        )
        assert_error(response, 403, "team_managers_only")
        response = client.open(
            endpoint_path(made, tail), method=method, json=body, headers=with_key(stranger)
        )
        assert_error(response, 404, "not_found")
    member_list = client.get(ENDPOINTS, query_string={"team_id": team_id}, headers=member.headers)
    assert_error(member_list, 403, "team_managers_only")
    stranger_list = client.get(
        ENDPOINTS, query_string={"team_id": team_id}, headers=stranger.headers
    )
    assert_error(stranger_list, 404, "not_found")
    for person, status, code in ((member, 403, "team_managers_only"), (stranger, 404, "not_found")):
        refused = client.post(
            ENDPOINTS,
            json={"url": HOOK, "events": ["balance.low"], "team_id": team_id},
            headers=with_key(person),
        )
        assert_error(refused, status, code)
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1

    deleted = client.delete(endpoint_path(made), headers=with_key(owner))
    assert deleted.status_code == 204
    assert (
        client.get(ENDPOINTS, query_string={"team_id": team_id}, headers=admin.headers).get_json()[
            "items"
        ]
        == []
    )


def test_the_endpoints_of_an_admin_who_leaves_or_is_made_a_member_are_disabled(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    """A team's endpoint posts the team's events to the URL its maker chose: once they no
    longer manage the team (removed, left, made a plain member), what they made stops."""
    owner, removed, leaving, demoted = (person_factory() for _ in range(4))
    team_id = make_team(client, owner, admin=removed)
    for person in (leaving, demoted):
        added = client.post(
            f"{TEAMS}/{team_id}/members",
            json={"email": person.email, "role": "admin"},
            headers=with_key(owner),
        )
        assert added.status_code == 201, added.get_json()
    owners = make_endpoint(client, owner, team_id=team_id)
    made = {
        person.id: make_endpoint(client, person, team_id=team_id)
        for person in (removed, leaving, demoted)
    }
    members = f"{TEAMS}/{team_id}/members"
    assert client.delete(f"{members}/{removed.id}", headers=with_key(owner)).status_code == 204
    assert client.delete(f"{members}/{leaving.id}", headers=with_key(leaving)).status_code == 204
    changed = client.patch(
        f"{members}/{demoted.id}", json={"role": "member"}, headers=with_key(owner)
    )
    assert changed.status_code == 200, changed.get_json()

    listed = client.get(ENDPOINTS, query_string={"team_id": team_id}, headers=owner.headers)
    standing = {
        item["id"]: (item["enabled"], item["disabled_reason"])
        for item in listed.get_json()["items"]
    }
    assert standing == {
        owners["id"]: (True, None),
        **{endpoint["id"]: (False, "creator_left") for endpoint in made.values()},
    }
    audited = audited_details(app, "webhook_endpoint_changed")
    assert [(entry["endpoint_id"], entry["disabled_reason"]) for entry in audited] == [
        (made[person.id]["id"], "creator_left") for person in (removed, leaving, demoted)
    ]
    # The owner may take one back: enabled, it no longer says why it was stopped, and a later
    # change of its maker, a plain member now, leaves it so.
    retaken = endpoint_path(made[demoted.id])
    enabled = client.patch(retaken, json={"enabled": True}, headers=with_key(owner))
    assert (enabled.get_json()["enabled"], enabled.get_json()["disabled_reason"]) == (True, None)
    recapped = client.patch(f"{members}/{demoted.id}", json={"cap": "5"}, headers=with_key(owner))
    assert recapped.status_code == 200, recapped.get_json()
    assert client.get(retaken, headers=owner.headers).get_json()["enabled"] is True


# 4. Deliveries, retry and the test event


def test_a_test_event_goes_to_its_endpoint_only(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    made = make_endpoint(client, person)
    other = make_endpoint(client, person, events=["balance.low", "balance.depleted"])
    sent = client.post(endpoint_path(made, "/test"), headers=with_key(person))
    assert sent.status_code == 202, sent.get_json()
    answer = sent.get_json()
    assert set(answer) == {"event_id", "delivery_id"}
    event_id = int(answer["event_id"].removeprefix("evt_"))
    assert events(app) == [
        (
            "webhook.test",
            {
                "account_id": str(person.account_id),
                "user_id": str(person.id),
                "endpoint_id": made["id"],
            },
        )
    ]
    assert deliveries(app) == [(event_id, int(made["id"]), "pending")]
    [entry] = _log(client, person, made)
    assert set(entry) == DELIVERY_FIELDS
    assert entry["id"] == answer["delivery_id"]
    assert entry["event_id"] == answer["event_id"]
    assert (entry["type"], entry["status"], entry["attempts"]) == ("webhook.test", "pending", 0)
    assert (entry["last_status"], entry["last_error"], entry["delivered_at"]) == (None, None, None)
    assert entry["next_attempt_at"] == entry["created_at"]
    assert _log(client, person, other) == []

    client.patch(endpoint_path(made), json={"enabled": False}, headers=with_key(person))
    refused = client.post(endpoint_path(made, "/test"), headers=with_key(person))
    assert_error(refused, 409, "webhook_endpoint_disabled")
    assert len(events(app)) == 1


def test_the_delivery_log_is_newest_first_a_page_at_a_time(
    client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    made = make_endpoint(client, person)
    sent = [
        client.post(endpoint_path(made, "/test"), headers=with_key(person)).get_json()
        for _ in range(3)
    ]
    path = endpoint_path(made, "/deliveries")
    first = client.get(path, query_string={"limit": 2}, headers=person.headers).get_json()
    assert [item["event_id"] for item in first["items"]] == [
        sent[2]["event_id"],
        sent[1]["event_id"],
    ]
    rest = client.get(
        path, query_string={"limit": 2, "cursor": first["next_cursor"]}, headers=person.headers
    ).get_json()
    assert [item["id"] for item in rest["items"]] == [sent[0]["delivery_id"]]
    assert rest["next_cursor"] is None
    bad = client.get(path, query_string={"cursor": "nope"}, headers=person.headers)
    assert list(assert_error(bad, 400, "validation_error")["details"]) == ["cursor"]


def test_a_failed_delivery_is_retried_now_and_a_delivered_one_is_not(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    made, other = make_endpoint(client, person), make_endpoint(client, person)
    sent = client.post(endpoint_path(made, "/test"), headers=with_key(person)).get_json()
    delivery_id = sent["delivery_id"]
    retry = endpoint_path(made, f"/deliveries/{delivery_id}/retry")
    set_delivery(
        app,
        delivery_id,
        status="failed",
        attempts=8,
        next_attempt_at=None,
        last_status=500,
        last_attempt_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    before = datetime.now(UTC)
    retried = client.post(retry, headers=with_key(person))
    assert retried.status_code == 200, retried.get_json()
    entry = retried.get_json()
    assert set(entry) == DELIVERY_FIELDS
    assert (entry["id"], entry["event_id"], entry["status"]) == (
        delivery_id,
        sent["event_id"],
        "pending",
    )
    assert entry["attempts"] == 8 and entry["last_status"] == 500
    due = datetime.fromisoformat(entry["next_attempt_at"].replace("Z", "+00:00"))
    assert before - _SLACK <= due <= datetime.now(UTC)
    assert _log(client, person, made) == [entry]

    set_delivery(app, delivery_id, status="delivered", next_attempt_at=None)
    assert_error(client.post(retry, headers=with_key(person)), 409, "already_delivered")
    # Another endpoint's delivery, or none, is not this endpoint's.
    elsewhere = endpoint_path(other, f"/deliveries/{delivery_id}/retry")
    assert_error(client.post(elsewhere, headers=with_key(person)), 404, "not_found")
    unknown = endpoint_path(made, f"/deliveries/{int(delivery_id) + 1000}/retry")
    assert_error(client.post(unknown, headers=with_key(person)), 404, "not_found")
    malformed = endpoint_path(made, "/deliveries/x1/retry")
    assert list(
        assert_error(client.post(malformed, headers=with_key(person)), 400, "validation_error")[
            "details"
        ]
    ) == ["delivery_id"]

    set_delivery(app, delivery_id, status="failed")
    client.patch(endpoint_path(made), json={"enabled": False}, headers=with_key(person))
    assert_error(client.post(retry, headers=with_key(person)), 409, "webhook_endpoint_disabled")
    client.patch(endpoint_path(made), json={"enabled": True}, headers=with_key(person))
    assert client.post(retry, headers=with_key(person)).get_json()["status"] == "pending"


def test_an_account_has_at_most_ten_endpoints_deleted_ones_aside(
    client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    made = [make_endpoint(client, person) for _ in range(10)]
    refused = client.post(
        ENDPOINTS, json={"url": HOOK, "events": ["balance.low"]}, headers=with_key(person)
    )
    assert_error(refused, 409, "too_many_webhook_endpoints")
    assert client.delete(endpoint_path(made[0]), headers=with_key(person)).status_code == 204
    make_endpoint(client, person)
    # Another account's count is its own.
    make_endpoint(client, person_factory())


def test_a_resolver_that_hangs_is_503_and_saves_nothing(
    app: Flask, client: FlaskClient, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system's resolver is the boundary here: one that never answers is stood in for."""
    person = person_factory()
    release = threading.Event()

    def hung(*_args: Any, **_kwargs: Any) -> Any:
        release.wait(10)
        raise OSError("resolver gave up")

    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(urls.socket, "getaddrinfo", hung)
    try:
        refused = client.post(
            ENDPOINTS,
            json={"url": "https://hooks.example.com/h", "events": ["balance.low"]},
            headers=with_key(person),
        )
    finally:
        release.set()
    assert_error(refused, 503, "service_unavailable")
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 0


def test_lookups_that_hang_do_not_hold_up_another_hosts_lookup(
    app: Flask, client: FlaskClient, person_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups of a host whose resolver never answers keep their threads; another host is
    looked up at once beside them, until as many lookups are under way as the process allows:
    then one more is a 503 at once, and none is saved."""
    person = person_factory()
    release = threading.Event()

    def resolver(host: str, *_args: Any, **_kwargs: Any) -> Any:
        if host == "hung.example.com":
            release.wait(30)
            raise OSError("resolver gave up")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.1.1.1", 443))]

    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(urls.socket, "getaddrinfo", resolver)
    monkeypatch.setattr(urls, "_in_flight", threading.BoundedSemaphore(12))

    def endpoint(host: str) -> Any:
        body = {"url": f"https://{host}/h", "events": ["balance.low"]}
        return client.post(ENDPOINTS, json=body, headers=with_key(person))

    try:
        for _ in range(11):  # more than a shared pool of 8 threads had
            assert_error(endpoint("hung.example.com"), 503, "service_unavailable")
        assert endpoint("hooks.example.com").status_code == 201
        assert_error(endpoint("hung.example.com"), 503, "service_unavailable")  # the 12th
        refused = assert_error(endpoint("hooks.example.com"), 503, "service_unavailable")
        assert refused["details"] == {"dns": "unavailable"}
    finally:
        release.set()
    assert scalar(app, select(func.count()).select_from(WebhookEndpoint)) == 1


# 5. Endpoints changed while the ledger runs


def _account_below_its_threshold(app: Flask, person: Person, errors: list[str]) -> None:
    """Spend 60 of the person's 100 credits, crossing their 50-credit threshold: a
    `balance.low` event fanned out to the account's endpoints, as any ledger operation does."""
    with app.app_context():
        try:
            with write_transaction(db.session):
                ledger.adjust(
                    db.session,
                    account_id=person.account_id,
                    amount=-60 * CR,
                    reason="spend",
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
        except Exception as error:
            errors.append(f"spend: {type(error).__name__}: {error}")
        finally:
            db.session.remove()


def _watched_endpoint(app: Flask, person: Person) -> int:
    with app.app_context():
        endpoint_id = new_endpoint(person, HOOK, "balance.low")
        with write_transaction(db.session):
            alerts.set_thresholds(
                db.session, account_id=person.account_id, amounts=[50 * CR], now=utcnow()
            )
        db.session.remove()
    return endpoint_id


def _change_while_spending(
    app: Flask,
    person: Person,
    endpoint_id: int,
    change: Callable[[WebhookEndpoint], None],
    *,
    spending_first: bool,
) -> list[str]:
    """`change` the endpoint, locked as the API locks it to change it, while the ledger spends:
    the spending starts once the endpoint is locked, and the change is made before it or once
    the spending is done or waits for a lock (`spending_first`); the change commits then.
    What failed, if anything."""
    errors: list[str] = []
    locked = threading.Event()

    def spend() -> None:
        locked.wait(10)
        _account_below_its_threshold(app, person, errors)

    spender = threading.Thread(target=spend)
    spender.start()
    with app.app_context():
        try:
            with write_transaction(db.session):
                endpoint = endpoints.get(
                    db.session, endpoint_id=endpoint_id, user_id=person.id, for_change=True
                ).endpoint
                if not spending_first:
                    change(endpoint)
                locked.set()
                if not until(lambda: not spender.is_alive() or waits_for_a_lock()):
                    errors.append("the spending neither ended nor waited")
                if spending_first:
                    change(endpoint)
        except Exception as error:
            errors.append(f"change: {type(error).__name__}: {error}")
        finally:
            db.session.remove()
    spender.join(30)
    assert not spender.is_alive()
    return errors


@pytest.mark.postgres_only
def test_an_endpoint_deleted_while_the_ledger_posts_it_an_event_does_not_deadlock(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(credits=100 * CR)
    endpoint_id = _watched_endpoint(app, person)

    def delete(endpoint: WebhookEndpoint) -> None:
        endpoints.delete(db.session, endpoint, context=TEST_CONTEXT, now=utcnow())

    assert _change_while_spending(app, person, endpoint_id, delete, spending_first=True) == []
    [(event_type, _data)] = events(app)
    assert event_type == "balance.low"
    # The delivery made before the endpoint was deleted failed with it.
    assert [(endpoint, status) for _event, endpoint, status in deliveries(app)] == [
        (endpoint_id, "failed")
    ]


@pytest.mark.postgres_only
def test_an_endpoint_disabled_while_the_ledger_posts_it_an_event_is_left_nothing_pending(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(credits=100 * CR)
    endpoint_id = _watched_endpoint(app, person)

    def disable(endpoint: WebhookEndpoint) -> None:
        endpoints.change(db.session, endpoint, enabled=False, context=TEST_CONTEXT, now=utcnow())

    assert _change_while_spending(app, person, endpoint_id, disable, spending_first=False) == []
    # The event was written once the endpoint was disabled: for no endpoint.
    assert [event_type for event_type, _data in events(app)] == ["balance.low"]
    assert deliveries(app) == []


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_url_is_resolved_before_the_request_holds_any_lock(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """While the host of a team's endpoint, new or changed, resolves, the team's thresholds can
    be set (which takes the team's row, and on SQLite the database's write lock). The system's
    resolver is the boundary here: a slow one is stood in for."""
    owner = person_factory()
    team_id = make_team(client, owner)
    path = (
        ENDPOINTS
        if method == "POST"
        else endpoint_path(make_endpoint(client, owner, team_id=team_id))
    )
    during: list[int] = []
    answered: list[int] = []

    def set_thresholds() -> None:
        response = app.test_client().put(
            ALERTS, json={"thresholds": ["1"], "team_id": team_id}, headers=with_key(owner)
        )
        answered.append(response.status_code)

    other = threading.Thread(target=set_thresholds)

    def slow_resolver(*_args: Any, **_kwargs: Any) -> Any:
        other.start()
        other.join(10)
        during.extend(answered)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.1.1.1", 443))]

    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT_SECONDS", 30)
    monkeypatch.setattr(urls.socket, "getaddrinfo", slow_resolver)
    url = "https://hooks.example.com/h"
    body = {"url": url, "events": ["balance.low"], "team_id": team_id}
    if method == "PATCH":
        body = {"url": url}
    saved = client.open(path, method=method, json=body, headers=with_key(owner))
    other.join(30)
    assert saved.status_code == (201 if method == "POST" else 200), saved.get_json()
    assert saved.get_json()["url"] == url
    assert during == [200]
