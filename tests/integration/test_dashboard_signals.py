"""The dashboard's alerts and webhooks in a real browser (Debian's Chromium through Playwright,
against a real gunicorn in demo mode, as in test_dashboard): the demo user sets low-balance
thresholds (saved as the API has them, each armed or fired said in words), adds a webhook
endpoint whose signing secret is shown once (copied; gone after a reload), sends a test event
and follows its delivery in the log as the deliver-webhooks job posts it to a receiver on
loopback (500, retried; the endpoint disabled, the delivery failed; enabled and retried by
hand: delivered, with one `webhook-id` and a valid signature), then deletes it; an endpoint's
URL and events are changed where it is listed (its next event goes to the new URL). With the URL
rules on, a loopback or plain-http URL is refused in words. A team's owner manages the team's
alerts and endpoints, apart from their own (a secret shown is gone once they look at their own
credits, or sign out); a member reads its thresholds only, and the page asks nothing it would be
refused. axe finds nothing serious; screenshots go to DASHBOARD_SCREENSHOTS."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Dialog, Locator, Page, expect

from creditapp.signals.models import EVENT_TYPES
from tests.conftest import Person
from tests.helpers import run_job_at
from tests.integration.live_server import call
from tests.integration.test_dashboard import (
    Browsing,
    _api,
    _grouped,
    _send_and_wait_for_the_reply,
    _serious_violations,
    browse,
    browsing,  # noqa: F401 (the fixture)
)
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.real_clock


def _sign_in(on: Browsing) -> Page:
    page = on.page
    page.goto(f"{on.base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")  # the placeholder dash
    expect(page.locator("#signals-for")).not_to_have_text("")
    return page


def _rows(page: Page, table: str) -> list[list[str]]:
    """A table's rows, each its cells' texts (the actions' column left out)."""
    rows = page.locator(f"{table} tbody tr").all()
    return [row.locator("td").all_inner_texts()[:-1] for row in rows]


def _thresholds(page: Page) -> list[list[str]]:
    """The thresholds shown, once read: each its amount and its state."""
    expect(page.locator("#thresholds tbody tr.reading")).to_have_count(0)
    return [
        row.locator("td").all_inner_texts()[:2]
        for row in page.locator("#thresholds tbody tr").all()
    ]


def _add_threshold(page: Page, amount: str) -> None:
    page.get_by_label("Threshold in credits").fill(amount)
    page.get_by_role("button", name="Add threshold").click()


def _armed(amount: str) -> list[str]:
    return [_grouped(amount), f"Armed: alerts when available credits fall below {_grouped(amount)}"]


def _fired(amount: str) -> list[str]:
    return [
        _grouped(amount),
        "Fired: available credits are below it; armed again once they are above"
        f" {_grouped(amount)}",
    ]


def _new(amount: str) -> list[str]:
    return [_grouped(amount), "New: saved when you press Save thresholds"]


def _deliver(app: Flask) -> dict[str, Any]:
    """One run of the deliver-webhooks job, as the beat starts it, a moment from now."""
    return run_job_at(app, "deliver-webhooks", datetime.now(UTC) + timedelta(seconds=1))


def _delivery_row(page: Page) -> Locator:
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(1)
    return rows


def _delivery_cells(page: Page) -> dict[str, str]:
    """The one delivery shown, by its column headings (but its actions)."""
    headings = page.locator("#deliveries thead th").all_inner_texts()
    cells = _delivery_row(page).locator("td").all_inner_texts()
    return dict(zip(headings[1:-1], cells[1:-1], strict=True))


def _refresh_deliveries(page: Page, path: str) -> None:
    with page.expect_response(f"**{path}?limit=20"):
        page.get_by_role("button", name="Refresh deliveries").click()


def test_thresholds_an_endpoint_its_secret_once_and_its_deliveries(
    app: Flask,
    browsing: Browsing,  # noqa: F811 (the fixture)
) -> None:
    base, screenshots = browsing.base, browsing.screenshots
    page = _sign_in(browsing)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    section = page.locator("#signals-section")
    expect(page.locator("#signals-for")).to_have_text("For your own credits.")
    expect(page.locator("#endpoints tbody tr")).to_have_text(["No endpoints yet."])
    # The demo user's thresholds (the demo seeds some), as the API has them, each removed.
    seeded = _api(base, page, "/api/credit/alerts")["thresholds"]
    if seeded:
        expect(page.locator("#thresholds tbody tr")).to_have_count(len(seeded))
        assert _thresholds(page) == [
            (_armed if each["armed"] else _fired)(each["threshold"]) for each in seeded
        ]
    for each in seeded:
        label = f"Remove the threshold of {_grouped(each['threshold'])} credits"
        page.get_by_role("button", name=label).click()
    expect(page.locator("#thresholds tbody tr")).to_have_text(["No thresholds yet: add one below."])
    # The page offers every event type the service posts, and only those.
    boxes = page.locator("#endpoint-form input[name=events]")
    assert [box.get_attribute("value") for box in boxes.all()] == list(EVENT_TYPES)
    assert _serious_violations(page) == []

    # Thresholds: two below the available credits, one above them (it starts fired); one added
    # and removed again, one added twice (said, not added).
    available = _api(base, page, "/api/credit/balance")["available"]
    above = str(int(Decimal(available)) + 1000)
    for amount in ("50", above, "10", "25"):
        _add_threshold(page, amount)
    assert _thresholds(page) == [_new("10"), _new("25"), _new("50"), _new(above)]
    page.get_by_role("button", name="Remove the threshold of 25 credits").click()
    _add_threshold(page, "50.000")
    expect(page.locator("#alerts-said")).to_have_text("50 is a threshold already.")
    assert _thresholds(page) == [_new("10"), _new("50"), _new(above)]
    assert _api(base, page, "/api/credit/alerts")["thresholds"] == seeded
    page.get_by_role("button", name="Save thresholds").click()
    expect(page.locator("#alerts-said")).to_have_text(
        f"Saved: an alert fires when available credits fall below 10, 50, {_grouped(above)}."
    )
    assert _thresholds(page) == [_armed("10"), _armed("50"), _fired(above)]
    assert _api(base, page, "/api/credit/alerts") == {
        "thresholds": [
            {"threshold": "10", "armed": True},
            {"threshold": "50", "armed": True},
            {"threshold": above, "armed": False},
        ],
        "team_id": None,
    }
    page.reload()
    expect(page.locator("#thresholds tbody tr")).to_have_count(3)
    assert _thresholds(page) == [_armed("10"), _armed("50"), _fired(above)]

    with WebhookReceiver() as hooks:
        hook = hooks.url("/hooks/creditapp")
        # An endpoint for the low-balance events and purchases: its secret shown once.
        page.get_by_label("URL", exact=True).fill(hook)
        page.get_by_label("purchase.completed").check()
        page.get_by_role("button", name="Add endpoint").click()
        box = page.locator("#new-secret")
        expect(box).to_be_visible()
        secret = page.locator("#new-secret-text").inner_text()
        assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32
        expect(box).to_contain_text("Copy it now: you will not see it again.")
        expect(page.locator("#new-secret-for")).to_have_text(f"For {hook}.")
        hooks.secret = secret  # the receiver verifies each delivery's signature with it
        page.get_by_role("button", name="Copy the secret").click()
        expect(page.locator("#copy-secret-outcome")).to_have_text("Copied to the clipboard.")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        (endpoint,) = _api(base, page, "/api/webhook-endpoints")["items"]
        assert "secret" not in endpoint
        # One row, and it is the endpoint's (not the "No endpoints yet." row it replaces).
        expect(page.locator("#endpoints tbody tr")).to_have_count(1)
        expect(page.locator("#endpoints tbody tr td").first).to_have_text(hook)
        events = "balance.low, balance.depleted, purchase.completed"
        assert _rows(page, "#endpoints")[0][:3] == [hook, events, "Enabled"]
        assert _serious_violations(page) == []
        section.screenshot(path=str(screenshots / "dashboard-webhooks-secret.png"))

        # After a reload the secret is nowhere on the page; the endpoint stays.
        page.reload()
        expect(page.locator("#endpoints tbody tr")).to_have_count(1)
        expect(page.locator("#endpoints tbody tr td").first).to_have_text(hook)
        expect(box).to_be_hidden()
        assert secret not in page.content()

        # A test event: its delivery waits in the log until the job posts it.
        deliveries = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"
        with page.expect_response(f"**/api/webhook-endpoints/{endpoint['id']}/test") as sent:
            page.get_by_role("button", name=f"Post a test event to {hook}").click()
        assert sent.value.status == 202
        event_id = sent.value.json()["event_id"]
        expect(page.locator("#endpoints-said")).to_have_text(
            f"A test event ({event_id}) is on its way to {hook}: see its delivery below."
        )
        (delivery,) = _api(base, page, deliveries)["items"]
        assert delivery["event_id"] == event_id
        expect(page.locator("#deliveries-title")).to_have_text(f"Deliveries to {hook}")
        shown = _delivery_cells(page)
        assert shown["Event"] == f"webhook.test {event_id}"
        assert shown["Status"].startswith("Waiting: to be sent ")
        assert (shown["Attempts"], shown["Last answer"]) == ("0", "\u2013")
        assert delivery["status"] == "pending" and delivery["attempts"] == 0
        expect(_delivery_row(page).get_by_role("button")).to_have_count(0)

        # The receiver fails it once: it waits for its next attempt.
        hooks.script(500)
        assert _deliver(app)["retrying"] == 1
        _refresh_deliveries(page, deliveries)
        status = _delivery_row(page).locator("td.status")
        expect(status).to_contain_text("Waiting: tried 1 time, next at ")
        shown = _delivery_cells(page)
        assert (shown["Attempts"], shown["Last answer"]) == ("1", "HTTP 500.")

        # Disabled, the endpoint's waiting delivery fails; a retry asks to enable it first.
        page.get_by_role("button", name=f"Disable {hook}").click()
        expect(page.locator("#endpoints-said")).to_have_text(
            f"{hook} is disabled: nothing is posted to it, and its pending deliveries failed."
        )
        assert _rows(page, "#endpoints")[0][2] == "Disabled"
        expect(status).to_have_text("Failed: it will not be tried again unless you retry it")
        assert _delivery_cells(page)["Last answer"] == "The endpoint was disabled."
        retry = f"{deliveries}/{delivery['id']}/retry"
        with page.expect_response(f"**{retry}") as answer:
            page.get_by_role("button", name=f"Retry the delivery of {event_id}").click()
        assert answer.value.status == 409
        browsing.meant_refusals.append((409, retry))
        expect(page.locator("#deliveries [role=alert]")).to_have_text(
            f"The delivery of {event_id} was not retried:"
            " This endpoint is disabled: enable it first."
        )
        assert _serious_violations(page) == []
        section.screenshot(path=str(screenshots / "dashboard-webhooks-failed.png"))

        # Enabled and retried by hand: delivered, the same event signed with the secret.
        page.get_by_role("button", name=f"Enable {hook}").click()
        expect(page.locator("#endpoints-said")).to_have_text(
            f"{hook} is enabled: events are posted to it again."
        )
        page.get_by_role("button", name=f"Retry the delivery of {event_id}").click()
        # (Its attempts are kept: the schedule goes on from where it was.)
        expect(status).to_contain_text("Waiting: tried 1 time, next at ")
        expect(_delivery_row(page).get_by_role("button")).to_have_count(0)
        expect(page.locator("#deliveries [role=alert]")).to_have_text("")
        assert _deliver(app)["delivered"] == 1
        _refresh_deliveries(page, deliveries)
        expect(status).to_contain_text("Delivered ")
        assert _delivery_cells(page)["Attempts"] == "2"
        assert _delivery_cells(page)["Last answer"] == "HTTP 200"
        assert hooks.failures == []
        assert [each.webhook_id for each in hooks.received] == [event_id] * 2
        assert [each.payload["type"] for each in hooks.received] == ["webhook.test"] * 2

        # A threshold just below the available credits: a message crosses it, the page says it
        # fired, and its balance.low event is delivered to the endpoint.
        available = Decimal(_api(base, page, "/api/credit/balance")["available"])
        crossed = str(available - Decimal("0.01"))
        _add_threshold(page, crossed)
        page.get_by_role("button", name="Save thresholds").click()
        expect(page.locator("#alerts-said")).to_contain_text(_grouped(crossed))
        assert _thresholds(page) == [_armed("10"), _armed("50"), _armed(crossed), _fired(above)]
        page.get_by_role("button", name="Start a conversation").click()
        _send_and_wait_for_the_reply(page, "Hello")
        expect(page.locator("#thresholds tbody tr.fired")).to_have_count(2)
        assert _thresholds(page) == [_armed("10"), _armed("50"), _fired(crossed), _fired(above)]
        _refresh_deliveries(page, deliveries)
        rows = page.locator("#deliveries tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.first.locator("td").nth(1)).to_contain_text("balance.low evt_")
        expect(rows.first.locator("td.status")).to_contain_text("Waiting: to be sent ")
        assert _deliver(app)["delivered"] == 1
        _refresh_deliveries(page, deliveries)
        expect(rows.first.locator("td.status")).to_contain_text("Delivered ")
        low = hooks.received[-1]
        assert low.verified and low.payload["type"] == "balance.low"
        assert low.payload["data"]["threshold"] == crossed
        assert Decimal(low.payload["data"]["available"]) < Decimal(crossed)
        assert rows.first.locator("td").nth(1).inner_text() == f"balance.low {low.webhook_id}"
        assert _serious_violations(page) == []
        section.screenshot(path=str(screenshots / "dashboard-webhooks.png"))
        page.set_viewport_size({"width": 375, "height": 800})
        section.screenshot(path=str(screenshots / "dashboard-webhooks-phone.png"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.set_viewport_size({"width": 1100, "height": 900})

    # Deleted after a confirm: gone from the list, its log closed.
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name=f"Delete {hook}").click()
    expect(page.locator("#endpoints tbody tr")).to_have_text(["No endpoints yet."])
    expect(page.locator("#deliveries-section")).to_be_hidden()
    expect(page.locator("#endpoints-said")).to_have_text(f"{hook} is deleted.")
    assert questions == [
        f"Delete the endpoint {hook}? Nothing more is posted to it, and its pending"
        " deliveries fail."
    ]
    assert _api(base, page, "/api/webhook-endpoints")["items"] == []


def _checked_events(page: Page) -> list[str]:
    boxes = page.locator("#endpoint-form input[name=events]:checked").all()
    return [box.get_attribute("value") or "" for box in boxes]


def _adding(page: Page) -> None:
    """The endpoint form adds an endpoint, as it first did: empty, the default events chosen."""
    expect(page.locator("#endpoint-form-title")).to_have_text("Add an endpoint")
    expect(page.locator("#endpoint-submit")).to_have_text("Add endpoint")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.get_by_label("URL", exact=True)).to_have_value("")
    assert _checked_events(page) == ["balance.low", "balance.depleted"]


def test_an_endpoint_is_changed_where_it_is_listed(
    app: Flask,
    browsing: Browsing,  # noqa: F811 (the fixture)
) -> None:
    base = browsing.base
    page = _sign_in(browsing)
    title = page.locator("#endpoint-form-title")
    url = page.get_by_label("URL", exact=True)
    with WebhookReceiver() as hooks:
        first, second = hooks.url("/hooks/first"), hooks.url("/hooks/second")
        url.fill(first)
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.locator("#new-secret")).to_be_visible()
        hooks.secret = page.locator("#new-secret-text").inner_text()
        expect(page.locator("#endpoints tbody tr td").first).to_have_text(first)
        (endpoint,) = _api(base, page, "/api/webhook-endpoints")["items"]

        # Edit fills the form with the endpoint as it is (the secret just shown stays: it is
        # shown once); Cancel changes nothing.
        page.get_by_role("button", name=f"Edit {first}").click()
        expect(title).to_have_text(f"Change the endpoint {first}")
        expect(url).to_have_value(first)
        expect(url).to_be_focused()
        expect(page.locator("#new-secret-text")).to_have_text(hooks.secret)
        assert _checked_events(page) == ["balance.low", "balance.depleted"]
        url.fill(second)
        page.get_by_role("button", name="Cancel").click()
        _adding(page)
        assert _api(base, page, "/api/webhook-endpoints")["items"] == [endpoint]

        # Another URL and other events: no event at all is said, and nothing is sent.
        page.get_by_role("button", name=f"Edit {first}").click()
        url.fill(second)
        page.get_by_label("balance.low").uncheck()
        page.get_by_label("balance.depleted").uncheck()
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#endpoint-said")).to_have_text("Choose at least one event to post.")
        page.get_by_label("balance.low").check()
        page.get_by_label("key.limit_reached").check()
        page.locator("#endpoint-form").screenshot(
            path=str(browsing.screenshots / "dashboard-webhooks-editing.png")
        )
        with page.expect_response(f"**/api/webhook-endpoints/{endpoint['id']}") as answer:
            page.get_by_role("button", name="Save changes").click()
        assert (answer.value.request.method, answer.value.status) == ("PATCH", 200)
        expect(page.locator("#endpoint-said")).to_have_text(
            f"Saved: balance.low, key.limit_reached are posted to {second}."
        )
        _adding(page)
        events = ["balance.low", "key.limit_reached"]
        assert _rows(page, "#endpoints")[0][:3] == [second, ", ".join(events), "Enabled"]
        assert _api(base, page, "/api/webhook-endpoints")["items"] == [
            {**endpoint, "url": second, "events": events}
        ]
        assert _serious_violations(page) == []
        page.locator("#signals-section").screenshot(
            path=str(browsing.screenshots / "dashboard-webhooks-changed.png")
        )

        # What is posted next goes to the new URL, signed with the same secret.
        page.get_by_role("button", name=f"Post a test event to {second}").click()
        expect(page.locator("#endpoints-said")).to_contain_text(f"is on its way to {second}")
        assert _deliver(app)["delivered"] == 1
        (received,) = hooks.received
        assert (received.path, received.verified) == ("/hooks/second", True)
        assert received.payload["type"] == "webhook.test"

    # A change answered once the person has moved on (Cancel, then another URL typed) leaves
    # the form as they left it, and says nothing there; the list shows the change.
    held: list[Any] = []
    one = f"**/api/webhook-endpoints/{endpoint['id']}"
    page.route(one, lambda route: held.append(route))
    page.get_by_role("button", name=f"Edit {second}").click()
    page.get_by_label("balance.depleted").check()
    page.get_by_role("button", name="Save changes").click()
    for _ in range(600):  # the change is held (30 s at most)
        if held:
            break
        page.wait_for_timeout(50)
    assert held
    page.get_by_role("button", name="Cancel").click()
    url.fill("https://hooks.example.com/next")
    with page.expect_response(lambda answer: answer.request.method == "PATCH"):
        held[0].continue_()
    page.unroute(one)
    expect(page.locator("#endpoints tbody td.events")).to_have_text(
        "balance.low, balance.depleted, key.limit_reached"
    )
    expect(url).to_have_value("https://hooks.example.com/next")
    expect(title).to_have_text("Add an endpoint")
    expect(page.locator("#endpoint-said")).to_have_text("")


def test_a_refused_url_is_said_in_words(app: Flask, tmp_path: Path) -> None:
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    # The URL rules as in production: only https, to public hosts.
    with browse(app, screenshots, WEBHOOK_ALLOW_PRIVATE="false") as production:
        page = _sign_in(production)
        form = page.locator("#endpoint-form")
        url = page.get_by_label("URL", exact=True)

        # No event chosen: said, and nothing is sent.
        url.fill("https://hooks.example.com/creditapp")
        for box in page.locator("#endpoint-form input[name=events]").all():
            box.uncheck()
        requested = len(production.requested)
        page.get_by_role("button", name="Add endpoint").click()
        expect(form.locator(".outcome")).to_have_text("Choose at least one event to post.")
        assert len(production.requested) == requested
        page.get_by_label("balance.low").check()

        def refused(address: str) -> None:
            """`address` refused (400 webhook_url_refused): the rule, then the service's reason."""
            url.fill(address)
            with page.expect_response("**/api/webhook-endpoints") as answer:
                page.get_by_role("button", name="Add endpoint").click()
            assert answer.value.status == 400
            error = answer.value.json()["error"]
            assert error["code"] == "webhook_url_refused"
            production.meant_refusals.append((400, "/api/webhook-endpoints"))
            outcome = form.locator(".outcome")
            expect(outcome).to_have_class("outcome refused")
            expect(outcome).to_have_text(
                "The endpoint was not added: Webhooks go only to https addresses of public hosts."
                f" {error['message']}"
            )
            expect(url).to_have_attribute("aria-invalid", "true")
            expect(url).to_have_attribute("aria-describedby", "endpoint-said endpoint-url-hint")

        refused("http://hooks.example.com/creditapp")  # not https
        refused("https://127.0.0.1/hooks")  # loopback
        refused("https://169.254.169.254/latest/meta-data/")  # the cloud's metadata service
        assert _serious_violations(page) == []
        screenshot = screenshots / "dashboard-webhooks-refused.png"
        page.locator("#signals-section").screenshot(path=str(screenshot))

        # Another URL: the field is as it was before the refusal.
        url.fill("https://hooks.example.com/creditapp")
        page.get_by_label("balance.low").uncheck()
        page.get_by_role("button", name="Add endpoint").click()
        expect(url).not_to_have_attribute("aria-invalid", "true")
        expect(url).to_have_attribute("aria-describedby", "endpoint-url-hint")
        expect(page.locator("#new-secret")).to_be_hidden()
        expect(page.locator("#endpoints tbody tr")).to_have_text(["No endpoints yet."])


def _as(page: Page, person: Person) -> None:
    """The signed-out page signed in as `person`, on the same tab."""
    page.evaluate(f"sessionStorage.setItem('creditapp.access_token', '{person.token}')")
    page.reload()
    expect(page.locator("#signals-for")).to_have_text("For your own credits.")


def test_a_teams_alerts_are_its_managers_and_its_members_read_them(
    browsing: Browsing,  # noqa: F811 (the fixture)
    person_factory: Callable[..., Person],
) -> None:
    base = browsing.base
    page = _sign_in(browsing)
    owner = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    member = person_factory(f"{secrets.token_hex(4)}@example.com")
    name = f"Alerts {secrets.token_hex(2)}"

    def post(path: str, body: dict[str, Any]) -> Any:
        headers = {"Idempotency-Key": secrets.token_hex(8)}
        status, _headers, answer = call(
            "POST", f"{base}{path}", owner, json.dumps(body).encode(), headers
        )
        assert status == 201, answer
        return json.loads(answer)

    personal = _api(base, page, "/api/credit/alerts")["thresholds"]
    team = post("/api/teams", {"name": name})
    post(f"/api/teams/{team['id']}/members", {"email": member.email, "role": "member"})

    # The owner chooses the team: its alerts, not theirs, are shown and saved.
    page.reload()
    page.locator("#team-chosen").select_option(label=f"{name} (owner)")
    expect(page.locator("#signals-for")).to_have_text(
        f"For the team {name}: you manage its alerts and webhooks."
    )
    expect(page.locator("#thresholds tbody tr")).to_have_text(["No thresholds yet: add one below."])
    _add_threshold(page, "5")
    page.get_by_role("button", name="Save thresholds").click()
    expect(page.locator("#alerts-said")).to_have_text(
        "Saved: an alert fires when available credits fall below 5."
    )
    # The team has no credits yet: below 5 already, the threshold starts fired.
    assert _thresholds(page) == [_fired("5")]
    assert _api(base, page, f"/api/credit/alerts?team_id={team['id']}") == {
        "thresholds": [{"threshold": "5", "armed": False}],
        "team_id": team["id"],
    }
    assert _api(base, page, "/api/credit/alerts")["thresholds"] == personal

    # An endpoint of the team's (nothing is posted to it here).
    hook = "http://127.0.0.1:9/team-hooks"
    page.get_by_label("URL", exact=True).fill(hook)
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#new-secret")).to_be_visible()
    secret = page.locator("#new-secret-text").inner_text()
    (endpoint,) = _api(base, page, f"/api/webhook-endpoints?team_id={team['id']}")["items"]
    assert (endpoint["url"], endpoint["team_id"]) == (hook, team["id"])
    expect(page.locator("#endpoints tbody tr")).to_have_count(1)
    expect(page.locator("#endpoints tbody tr td").first).to_have_text(hook)
    assert _rows(page, "#endpoints")[0][:3] == [hook, "balance.low, balance.depleted", "Enabled"]

    # Back to their own credits: theirs are shown again, and the team's secret is gone.
    page.locator("#team-chosen").select_option(label="Personal: your own credits")
    expect(page.locator("#signals-for")).to_have_text("For your own credits.")
    expect(page.locator("#thresholds tbody tr")).to_have_count(max(len(personal), 1))
    assert _thresholds(page) == (
        [(_armed if each["armed"] else _fired)(each["threshold"]) for each in personal]
        or [["No thresholds yet: add one below."]]
    )
    expect(page.locator("#endpoints tbody tr")).to_have_text(["No endpoints yet."])
    expect(page.locator("#new-secret")).to_be_hidden()
    assert secret not in page.content()
    assert _api(base, page, "/api/webhook-endpoints")["items"] == []

    # Another endpoint of the team's, its secret showing when the owner signs out: gone with them.
    page.locator("#team-chosen").select_option(label=f"{name} (owner)")
    expect(page.locator("#endpoints tbody tr")).to_have_count(1)
    page.get_by_label("URL", exact=True).fill(f"{hook}/caps")
    page.get_by_label("balance.low").uncheck()
    page.get_by_label("balance.depleted").uncheck()
    page.get_by_label("team.member_cap_reached").check()
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#endpoints tbody tr")).to_have_count(2)
    secret = page.locator("#new-secret-text").inner_text()
    assert secret.startswith("whsec_")
    assert _rows(page, "#endpoints")[0][:2] == [f"{hook}/caps", "team.member_cap_reached"]
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()
    assert secret not in page.content()
    expect(page.locator("#new-secret")).to_be_hidden()
    expect(page.locator("#endpoints tbody tr")).to_have_count(0)

    # The member reads the team's thresholds, and is offered nothing they may not do.
    _as(page, member)
    page.locator("#team-chosen").select_option(label=f"{name} (member)")
    expect(page.locator("#signals-for")).to_have_text(
        f"For the team {name}: you see its thresholds; only its owner and its admins change"
        " them and manage its webhooks."
    )
    expect(page.locator("#thresholds tbody tr")).to_have_count(1)
    assert _thresholds(page) == [_fired("5")]
    expect(page.locator("#thresholds thead th")).to_have_text(["Threshold", "State", "Actions"])
    expect(page.locator("#thresholds thead th").last).to_be_hidden()
    expect(page.locator("#thresholds tbody button")).to_have_count(0)
    for hidden in ("#thresholds-manage", "#endpoints-manage"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#endpoints-closed")).to_be_visible()
    assert _serious_violations(page) == []
    page.locator("#signals-section").screenshot(
        path=str(browsing.screenshots / "dashboard-webhooks-member.png")
    )
