"""The dashboard and the admin console in a real browser (Debian's Chromium through
Playwright), against a real gunicorn in demo mode. The dashboard: sign in with the demo button,
see the API's balance, chat with a streamed reply, watch the balance fall by the cost shown, and
open that charge's receipt; an expired access token is renewed without signing in again, and a
message whose answer was lost is charged once when sent again. The console: find a user, grant
with a double click (one grant), adjust, see drift highlighted, process compensations, add a
price. Every request stays on the service's origin; no console error; no serious or critical
accessibility violation (axe-core).
Screenshots go to DASHBOARD_SCREENSHOTS (default: the test's own folder)."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Page, Route, expect, sync_playwright
from sqlalchemy import text

from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import utcnow
from tests.helpers import run_job_at
from tests.integration.google_certs import CLIENT_ID, GoogleCertificates
from tests.integration.live_server import call, live_server

pytestmark = pytest.mark.real_clock
CHROMIUM = "/usr/bin/chromium"
GOOGLE_SCRIPT = "https://accounts.google.com/gsi/client"


def _api(base: str, page: Page, path: str, *, raw: bool = False) -> Any:
    """What the API answers the page's signed-in user: JSON, or the raw body."""
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    status, _headers, body = call("GET", f"{base}{path}", token)
    assert status == 200, body
    return body if raw else json.loads(body)


def _wait_until(page: Page, condition: Callable[[], bool], seconds: float = 30) -> None:
    """Let the page run (and Playwright deliver its events) until `condition` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        page.wait_for_timeout(50)


def _grouped(credits: str) -> str:
    """Credits as the pages show them: grouped by thousands ("1,099.5"), every digit kept."""
    sign, unsigned = ("-", credits[1:]) if credits.startswith("-") else ("", credits)
    whole, dot, fraction = unsigned.partition(".")
    return f"{sign}{int(whole):,}{dot}{fraction}"


def _dollars(credits: str) -> str:
    """What credits are worth (1 credit = $0.001), to the cent, as the pages show it."""
    cents = (Decimal(credits) / 10).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return "< $0.01" if cents == 0 and Decimal(credits) else f"${cents / 100:,.2f}"


def _serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{violation['id']}: {violation['help']}"
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


@dataclass
class Browsing:
    """A page on a live demo server, and what it asked for and complained of."""

    base: str
    page: Page
    screenshots: Path
    requested: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    # (status, path) of every answer >= 400, and those the test provoked on purpose.
    refused: list[tuple[int, str]] = field(default_factory=list)
    meant_refusals: list[tuple[int, str]] = field(default_factory=list)


@contextmanager
def browse(app: Flask, screenshots: Path, **env: str) -> Iterator[Browsing]:
    """Chromium on a live server over the test's database, in demo mode (and `env`)."""
    seeded = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert seeded.exit_code == 0, seeded.output
    screenshots.mkdir(parents=True, exist_ok=True)
    server_env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "DEMO_MODE": "true"}
    with live_server({**server_env, **env}, threads=4) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        browsing = Browsing(base, page, screenshots)
        page.on("request", lambda request: browsing.requested.append(request.url))
        page.on(
            "response",
            lambda response: (
                browsing.refused.append((response.status, urlsplit(response.url).path))
                if response.status >= 400
                else None
            ),
        )
        # (Chromium logs every answer >= 400 as an error: those are checked as `refused`.)
        page.on(
            "console",
            lambda message: (
                browsing.console_errors.append(message.text)
                if message.type == "error" and "Failed to load resource" not in message.text
                else None
            ),
        )
        yield browsing
        browser.close()
    assert browsing.console_errors == []
    # In any order: requests in flight together are answered in any order. Said as what was
    # refused unasked and what was asked and not refused, so that a failure names just those.
    refused, meant = Counter(browsing.refused), Counter(browsing.meant_refusals)
    assert (refused - meant, meant - refused) == (Counter(), Counter())


@pytest.fixture
def browsing(app: Flask, tmp_path: Path) -> Iterator[Browsing]:
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    with browse(app, screenshots) as browsing:
        yield browsing
    requested = browsing.requested
    assert requested and all(url.startswith(browsing.base) for url in requested), requested


# Records every text written into an assistant's reply (each piece replaces its text node).
REPLY_TEXTS_SHOWN = """() => {
  window.replyTextsShown = [];
  new MutationObserver((records) => {
    for (const record of records) {
      if (!record.target.matches?.("#conversation .assistant p")) continue;
      for (const node of record.addedNodes) {
        if (node.nodeType === Node.TEXT_NODE) window.replyTextsShown.push(node.data);
      }
    }
  }).observe(document.querySelector("#conversation"), { childList: true, subtree: true });
}"""


def test_sign_in_chat_and_the_receipt_of_the_charge(browsing: Browsing) -> None:
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    page.goto(f"{base}/")
    assert _serious_violations(page) == []
    page.screenshot(path=str(screenshots / "sign-in.png"))

    # By keyboard: the first Tab reaches the sign-in button, its focus ring shows, Enter works.
    page.keyboard.press("Tab")
    focused = "[document.activeElement.textContent, getComputedStyle(document.activeElement)"
    focused += ".outlineStyle]"
    assert page.evaluate(focused) == ["Sign in as the demo user", "solid"]
    page.keyboard.press("Enter")
    expect(page.locator("#balance")).not_to_have_text("\u2013")  # the placeholder dash
    balance = _api(base, page, "/api/credit/balance")
    assert page.locator("#balance").inner_text() == _grouped(balance["balance"])
    assert page.locator("#available").inner_text() == _grouped(balance["available"])

    # Chat with Ada: the reply streams in, word by word.
    page.get_by_role("button", name="Start a conversation").click()
    page.get_by_label("Your message").fill("Hello Ada!")
    # Each text the reply showed, as the page wrote it: a busy machine may paint it only once,
    # and a poll of what is shown may come after its last piece.
    page.evaluate(REPLY_TEXTS_SHOWN)
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#conversation .assistant p").first
    cost = page.locator("#conversation .assistant .cost")
    cost.wait_for()
    final = reply.inner_text()
    assert final == "Tell me more. You said: Hello Ada!"
    shown = page.evaluate("window.replyTextsShown")
    assert len(shown) > 1 and shown[-1] == final, shown  # it came in pieces
    assert all(final.startswith(text) for text in shown), shown
    charged = cost.inner_text().removesuffix(" credits")
    after = Decimal(balance["balance"]) - Decimal(charged)
    assert page.locator("#balance").inner_text() == _grouped(str(after))
    assert _api(base, page, "/api/credit/balance")["balance"] == str(after)
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)

    # Usage: one bar for the one day with usage, the model's row, and the CSV downloads
    # are the API's own.
    expect(page.locator("#usage-chart .bar")).to_have_count(1)
    assert page.locator("#usage-legend li").all_inner_texts() == ["demo:demo-chat"]
    model_row = page.locator("#usage-models tbody tr").first.locator("td")
    assert model_row.all_inner_texts()[:2] == ["demo", "demo-chat"]
    assert model_row.last.inner_text() == charged
    provider_row = page.locator("#usage-providers tbody tr").first.locator("td")
    assert provider_row.first.inner_text() == "demo"
    assert provider_row.last.inner_text() == charged
    usage_range = (
        f"from={page.locator('#usage-from').input_value()}"
        f"&to={page.locator('#usage-to').input_value()}"
    )
    for button, path in (
        ("Download CSV", "/api/credit/transactions?format=csv"),
        (
            "Download CSV by day and model",
            f"/api/credit/usage?group_by=day_model&format=csv&{usage_range}",
        ),
    ):
        with page.expect_download() as downloaded:
            page.get_by_role("button", name=button, exact=True).click()
        assert Path(downloaded.value.path()).read_bytes() == _api(base, page, path, raw=True)

    # The charge's receipt shows the API's numbers.
    page.get_by_role("button", name=f"Receipt of the charge of -{charged} credits").click()
    (entry,) = _api(base, page, "/api/credit/transactions?type=charge")["items"]
    receipt = _api(base, page, f"/api/credit/transactions/{entry['id']}")["receipt"]
    totals = page.locator("#receipt .totals")
    for shown, name in (("charged", "charged"), ("exact-cost", "exact"), ("held", "held")):
        assert totals.locator(f"[data-field={shown}]").inner_text() == receipt[name]
    lines = page.locator("#receipt .lines tbody tr")
    expect(lines).to_have_count(4)
    assert [lines.nth(index).locator("td").nth(3).inner_text() for index in range(4)] == [
        line["credits"] for line in receipt["lines"]
    ]
    page.locator("#receipt").screenshot(path=str(screenshots / "receipt.png"))
    assert _serious_violations(page) == []

    # After a reload the conversation is there to open again, in order.
    page.reload()
    page.get_by_role("button", name="Ada, started").click()
    expect(page.locator("#conversation li")).to_have_count(2)
    assert page.locator("#conversation li").all_inner_texts() == ["Hello Ada!", final]

    # Readable at phone width: nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.screenshot(path=str(screenshots / "phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()


def _start_a_chat(browsing: Browsing) -> dict[str, Any]:
    """Signed in as the demo user with a conversation open: the balance before any message."""
    page = browsing.page
    page.goto(f"{browsing.base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")
    page.get_by_role("button", name="Start a conversation").click()
    page.get_by_label("Your message").wait_for()
    return _api(browsing.base, page, "/api/credit/balance")


def _expire_the_access_token(app: Flask, page: Page) -> None:
    """The page's access token, as it is once JWT_ACCESS_MINUTES have passed: the same session's,
    signed with the service's key, expired a minute ago."""
    secret = app.config["JWT_SECRET_KEY"]
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    now = int(time.time())
    expired = {**claims, "iat": now - 16 * 60, "nbf": now - 16 * 60, "exp": now - 60}
    expired_token = jwt.encode(expired, secret, algorithm="HS256")
    page.evaluate(f"sessionStorage.setItem('creditapp.access_token', {json.dumps(expired_token)})")


def _send_and_wait_for_the_reply(page: Page, content: str) -> Decimal:
    """What the page shows the message cost."""
    costs = page.locator("#conversation .assistant .cost")
    replies = costs.count()
    page.get_by_label("Your message").fill(content)
    page.get_by_role("button", name="Send").click()
    expect(costs).to_have_count(replies + 1)
    return Decimal(costs.last.inner_text().removesuffix(" credits"))


def test_an_expired_access_token_is_renewed_without_signing_in_again(
    app: Flask, browsing: Browsing
) -> None:
    """The access token lives JWT_ACCESS_MINUTES, the session much longer: a request refused for
    an expired access token renews the pair with the refresh token and is tried again. Requests
    refused together share one refresh (a refresh token is spent by its use)."""
    base, page = browsing.base, browsing.page
    before = _start_a_chat(browsing)
    refreshes: list[int] = []
    usage_answers: list[int] = []

    def count(response: Any) -> None:
        path = urlsplit(response.url).path
        if path == "/api/auth/refresh":
            refreshes.append(response.status)
        elif path == "/api/credit/usage":
            usage_answers.append(response.status)

    page.on("response", count)

    # The usage of a range: three requests at once, each refused; one refresh, each tried again.
    _expire_the_access_token(app, page)
    page.get_by_role("button", name="Show", exact=True).click()
    _wait_until(page, lambda: len(usage_answers) == 6)
    assert sorted(usage_answers) == [200, 200, 200, 401, 401, 401]
    assert refreshes == [200]
    # The first refusal ends the session on the page, which stops the others still in flight.
    revoked = browsing.refused.count((401, "/api/credit/usage"))
    assert 1 <= revoked <= 3
    browsing.meant_refusals.extend([(401, "/api/credit/usage")] * revoked)

    # A message sent once the new access token has expired in turn: renewed again, sent, and
    # charged once; the balance shown is the API's.
    _expire_the_access_token(app, page)
    charged = _send_and_wait_for_the_reply(page, "Hello Ada!")
    (conversation,) = _api(base, page, "/api/conversations")["items"]
    browsing.meant_refusals.append((401, f"/api/conversations/{conversation['id']}/messages"))
    assert refreshes == [200, 200]
    (charge,) = _api(base, page, "/api/credit/transactions?type=charge")["items"]
    assert charge["amount"] == f"-{charged}"
    after = Decimal(before["balance"]) - charged
    assert _api(base, page, "/api/credit/balance")["balance"] == str(after)
    expect(page.locator("#balance")).to_have_text(_grouped(str(after)))
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert page.locator("#chat-error").inner_text() == ""

    # Once the session is over (signed out elsewhere), the refresh is refused: the page shows the
    # sign-in again, after one refresh, not a loop of them.
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    assert call("POST", f"{base}/api/auth/logout", token)[0] == 204
    _expire_the_access_token(app, page)
    usage_answers.clear()
    page.get_by_role("button", name="Show", exact=True).click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()
    _wait_until(page, lambda: len(usage_answers) == 3)
    assert usage_answers == [401, 401, 401] and refreshes == [200, 200, 401]
    assert page.evaluate("[sessionStorage.length]") == [0]
    browsing.meant_refusals.extend([(401, "/api/credit/usage")] * 3 + [(401, "/api/auth/refresh")])


def test_a_message_whose_answer_was_lost_is_charged_once(browsing: Browsing) -> None:
    """The service handles the message but its answer never reaches the page: sent again (the
    same text), it carries the same Idempotency-Key, gets the first send's answer replayed, and
    the message is charged once."""
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    before = _start_a_chat(browsing)
    keys: list[str] = []
    replayed: list[str | None] = []

    def lose_the_first_answer(route: Route) -> None:
        keys.append(route.request.headers["idempotency-key"])
        made = route.fetch()
        assert made.status == 200, made.text()
        replayed.append(made.headers.get("idempotent-replayed"))
        if len(keys) == 1:
            route.abort("connectionreset")
        else:
            route.fulfill(response=made)

    page.route("**/api/conversations/*/messages", lose_the_first_answer)
    page.get_by_label("Your message").fill("Hello Ada!")
    page.get_by_role("button", name="Send").click()
    _wait_until(page, lambda: len(keys) == 1)
    expect(page.locator("#chat-error")).to_have_text(
        "No answer came back: press Send again to retry (a message is never charged twice)."
    )
    expect(page.get_by_label("Your message")).to_have_value("Hello Ada!")
    page.screenshot(path=str(screenshots / "dashboard-lost-answer.png"), full_page=True)
    charged = _send_and_wait_for_the_reply(page, "Hello Ada!")
    page.unroute("**/api/conversations/*/messages")

    assert len(keys) == 2 and keys[0] == keys[1]
    assert replayed == [None, "true"]
    (charge,) = _api(base, page, "/api/credit/transactions?type=charge")["items"]
    assert charge["amount"] == f"-{charged}"
    after = Decimal(before["balance"]) - charged
    assert _api(base, page, "/api/credit/balance")["balance"] == str(after)
    expect(page.locator("#balance")).to_have_text(_grouped(str(after)))
    assert page.locator("#conversation li p:not(.cost)").all_inner_texts() == [
        "Hello Ada!",
        "Tell me more. You said: Hello Ada!",
    ]
    expect(page.locator("#chat-error")).to_have_text("")
    expect(page.get_by_label("Your message")).to_have_value("")

    # A new message is a new key.
    _send_and_wait_for_the_reply(page, "And again?")
    charges = _api(base, page, "/api/credit/transactions?type=charge")["items"]
    assert len(charges) == 2


def _sign_in_as_the_demo_admin_with_the_users_button(page: Page) -> None:
    """The next person on the tab: the demo admin (who has a dashboard too), through the same
    button, its request's body changed on the way."""
    page.route(
        "**/api/auth/demo",
        lambda route: route.continue_(
            post_data=json.dumps({"role": "admin"}),
            headers={**route.request.headers, "content-type": "application/json"},
        ),
    )
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#tier")).to_have_text("pro")
    page.unroute("**/api/auth/demo")


def test_signing_out_leaves_nothing_of_the_session_for_the_next_person(
    browsing: Browsing,
) -> None:
    """A signs in, chats, opens a receipt, starts a draft and signs out; B signs in on the same
    tab: nothing of A's conversation, draft, receipt or numbers is on the page, nor in it."""
    base, page = browsing.base, browsing.page
    _start_a_chat(browsing)
    charged = _send_and_wait_for_the_reply(page, "A secret of A")
    page.get_by_role("button", name=f"Receipt of the charge of -{charged} credits").click()
    expect(page.locator("#receipt")).to_be_visible()
    page.get_by_label("Your message").fill("A draft of A")
    a_balance = page.locator("#balance").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()

    # Hidden is not enough: what A saw is gone from the page itself.
    left = page.locator("#signed-in").text_content() or ""
    assert "A secret of A" not in left and "Ada, started" not in left
    assert a_balance not in left
    assert page.get_by_label("Your message").input_value() == ""
    assert page.locator("#receipt .summary").text_content() == ""
    assert _serious_violations(page) == []  # the sign-in page as the next person finds it

    # B (the demo admin, who has a dashboard too) signs in with the same button.
    _sign_in_as_the_demo_admin_with_the_users_button(page)
    assert _api(base, page, "/api/me")["email"] == "admin@demo.creditapp"
    b_transactions = _api(base, page, "/api/credit/transactions")["items"]
    expect(page.locator("#transactions tbody tr")).to_have_count(len(b_transactions))
    expect(page.locator("#conversation li")).to_have_count(0)
    expect(page.locator("#receipt")).to_be_hidden()
    expect(page.locator("#send")).to_be_hidden()
    expect(page.get_by_role("button", name="Ada, started")).to_have_count(0)
    assert page.get_by_label("Your message").input_value() == ""
    shown = page.locator("#signed-in").inner_text()
    assert "A secret of A" not in shown and "A draft of A" not in shown
    assert page.locator("#chat-error").inner_text() == ""


def test_an_answer_for_the_previous_session_is_not_shown_to_the_next(
    browsing: Browsing,
) -> None:
    """A signs in, and A's balance is still on its way when A signs out and B signs in on the
    same tab: when it comes, B's page shows B's balance, not A's."""
    base, page = browsing.base, browsing.page
    held: list[tuple[Route, Any]] = []
    answered: list[str] = []

    def hold_the_first(route: Route) -> None:
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route("**/api/credit/balance", hold_the_first)
    page.on("response", lambda response: answered.append(urlsplit(response.url).path))
    page.goto(f"{base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    _wait_until(page, lambda: len(held) == 1)
    (route, a_answer) = held[0]
    a_balance = a_answer.json()["balance"]
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()

    # B (the demo admin) signs in with the same button; B's balance is answered at once.
    _sign_in_as_the_demo_admin_with_the_users_button(page)
    b_balance = _api(base, page, "/api/credit/balance")["balance"]
    assert b_balance != a_balance
    expect(page.locator("#balance")).to_have_text(_grouped(b_balance))

    # A's answer arrives now, for a session that is over: its request was stopped as A signed
    # out, and the page never reads it.
    route.fulfill(response=a_answer)
    page.wait_for_timeout(1000)  # time enough for the page to read it
    assert answered.count("/api/credit/balance") == 1
    page.unroute("**/api/credit/balance")
    expect(page.locator("#balance")).to_have_text(_grouped(b_balance))
    expect(page.locator("#tier")).to_have_text("pro")
    expect(page.locator("#sign-in-error")).to_have_text("")


LOADS = {
    "/api/credit/balance",
    "/api/credit/grants",
    "/api/credit/transactions",
    "/api/characters",
    "/api/conversations",
    "/api/credit/alerts",
    "/api/webhook-endpoints",
}


def test_a_revoked_session_says_why_it_returns_to_sign_in(browsing: Browsing) -> None:
    """Signed out everywhere (or by an admin) meanwhile: the next request is refused with
    token_revoked, and the sign-in says so instead of appearing without a word."""
    base, page = browsing.base, browsing.page
    answered: list[str] = []
    page.on("response", lambda response: answered.append(urlsplit(response.url).path))
    page.goto(f"{base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    # Every request of the dashboard answered before the session is revoked.
    _wait_until(
        page,
        lambda: answered.count("/api/credit/usage") == 3 and set(answered) >= LOADS,
    )
    expect(page.locator("#usage-note")).to_have_text("No usage in this range.")
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    assert call("POST", f"{base}/api/auth/logout", token)[0] == 204
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page.locator("#sign-in-error")).to_have_text(
        "You were signed out: this session was revoked (signed out elsewhere, or by an admin)."
        " Please sign in again."
    )
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert page.evaluate("[sessionStorage.length]") == [0]
    # The first refusal ends the session on the page, which stops the others still in flight.
    revoked = browsing.refused.count((401, "/api/credit/usage"))
    assert 1 <= revoked <= 3
    browsing.meant_refusals.extend([(401, "/api/credit/usage")] * revoked)
    assert _serious_violations(page) == []


def test_the_usage_range_says_what_is_wrong_and_when_there_is_nothing(
    browsing: Browsing,
) -> None:
    """From after To: the API's 400 message beside the range, and the old chart gone. A range
    without usage says so."""
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    _start_a_chat(browsing)
    _send_and_wait_for_the_reply(page, "Hello Ada!")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page.locator("#usage-chart .bar")).to_have_count(1)
    expect(page.locator("#usage-note")).to_have_text("")

    to = page.locator("#usage-to").input_value()
    after = (date.fromisoformat(to) + timedelta(days=1)).isoformat()
    page.locator("#usage-from").fill(after)
    page.get_by_role("button", name="Show", exact=True).click()
    status, _headers, body = call(
        "GET",
        f"{base}/api/credit/usage?group_by=day&from={after}&to={to}",
        page.evaluate("sessionStorage.getItem('creditapp.access_token')"),
    )
    assert status == 400
    error = json.loads(body)["error"]
    expect(page.locator("#usage-note")).to_have_text(
        f"{error['message']} From: {error['details']['from'][0]}"
    )
    expect(page.locator("#usage-note")).to_have_class("error")
    expect(page.locator("#usage-from")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#usage-chart .bar")).to_have_count(0)
    expect(page.locator("#usage-models tbody tr")).to_have_count(0)
    browsing.meant_refusals.extend([(400, "/api/credit/usage")] * 3)
    assert _serious_violations(page) == []
    page.locator("section[aria-labelledby=usage-title]").screenshot(
        path=str(screenshots / "usage-range-refused.png")
    )

    a_year_ago = date.fromisoformat(to) - timedelta(days=365)
    page.locator("#usage-from").fill(a_year_ago.isoformat())
    page.locator("#usage-to").fill((a_year_ago + timedelta(days=7)).isoformat())
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page.locator("#usage-note")).to_have_text("No usage in this range.")
    expect(page.locator("#usage-from")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#usage-chart .bar")).to_have_count(0)
    assert _serious_violations(page) == []


def _wait_in_words(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    parts = [f"{minutes} minute{'' if minutes == 1 else 's'}"] if minutes else []
    if rest or not minutes:
        parts.append(f"{rest} second{'' if rest == 1 else 's'}")
    return " ".join(parts)


def test_the_sign_in_limit_says_how_long_to_wait(app: Flask, tmp_path: Path) -> None:
    """Sign-in is limited per address (10 per 5 minutes): the refusal's Retry-After is shown
    on the page, and the button waits as long."""
    limit = {"RATELIMIT_ENABLED": "true", "DEMO_SIGN_IN_LIMIT": "10 per 5 minutes"}
    with browse(app, tmp_path, **limit) as browsing:
        base, page = browsing.base, browsing.page
        for _ in range(10):  # the same address's earlier sign-ins
            assert call("POST", f"{base}/api/auth/demo")[0] == 200
        refused: list[str] = []
        page.on(
            "response",
            lambda response: (
                refused.append(response.headers["retry-after"]) if response.status == 429 else None
            ),
        )
        page.goto(f"{base}/")
        page.get_by_role("button", name="Sign in as the demo user").click()
        _wait_until(page, lambda: len(refused) == 1)
        wait = int(refused[0])
        assert 0 < wait <= 300
        expect(page.locator("#sign-in-error")).to_have_text(
            f"Too many sign-ins from this address for now: try again in {_wait_in_words(wait)}."
        )
        expect(page.get_by_role("button", name="Sign in as the demo user")).to_be_disabled()
        assert _serious_violations(page) == []
        page.screenshot(path=str(tmp_path / "sign-in-limited.png"))
        browsing.meant_refusals.append((429, "/api/auth/demo"))


def test_a_retry_after_that_cannot_be_right_is_not_believed(browsing: Browsing) -> None:
    """A 429 whose Retry-After is negative, fractional, not a number or longer than an hour
    (days would overflow the timer) says to wait a few minutes and leaves the buttons enabled;
    a whole number of seconds is said in words, and the buttons wait as long."""
    base, page = browsing.base, browsing.page
    page.goto(f"{base}/")
    sign_in = page.get_by_role("button", name="Sign in as the demo user")
    refusal = json.dumps({"error": {"code": "rate_limited", "message": "Too many requests."}})

    def refuse_with(wait: str) -> None:
        page.unroute("**/api/auth/demo")
        page.route(
            "**/api/auth/demo",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": wait},
                content_type="application/json",
                body=refusal,
            ),
        )
        page.evaluate("document.querySelector('#sign-in-error').textContent = 'before'")
        sign_in.click()
        browsing.meant_refusals.append((429, "/api/auth/demo"))

    for wait in ["-5", "2.5", "3000000", "1e3", "soon", "0", ""]:
        refuse_with(wait)
        expect(page.locator("#sign-in-error")).to_have_text(
            "Too many requests. Please wait a few minutes before signing in again."
        )
        expect(sign_in).to_be_enabled()
    refuse_with("90")
    expect(page.locator("#sign-in-error")).to_have_text(
        "Too many sign-ins from this address for now: try again in 1 minute 30 seconds."
    )
    expect(sign_in).to_be_disabled()
    page.unroute("**/api/auth/demo")


def _short_day(day: date) -> str:
    return f"{day:%b} {day.day}"


def _overlapping_labels(page: Page) -> int:
    """How many of the x axis's date labels overlap the next one."""
    return int(
        page.evaluate(
            """() => {
              const boxes = [...document.querySelectorAll("#usage-chart .x-axis text")]
                .map((label) => label.getBoundingClientRect());
              return boxes.slice(1).filter((box, index) => box.left < boxes[index].right).length;
            }"""
        )
    )


def test_a_conversation_cannot_be_started_before_the_characters_are_known(
    browsing: Browsing,
) -> None:
    """A click on Start before the characters arrived sent no character (a 400)."""
    page = browsing.page
    held: list[Route] = []
    page.route("**/api/characters?limit=200", lambda route: held.append(route))
    page.goto(f"{browsing.base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")
    start = page.get_by_role("button", name="Start a conversation")
    expect(start).to_be_disabled()
    assert len(held) == 1
    held[0].continue_()
    expect(start).to_be_enabled()
    start.click()
    page.get_by_label("Your message").wait_for()
    assert browsing.refused == []


def test_the_usage_chart_has_axes_a_value_on_hover_and_focus_and_a_table(
    browsing: Browsing,
) -> None:
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    _start_a_chat(browsing)
    charged = _send_and_wait_for_the_reply(page, "Hello Ada!")
    bar = page.locator("#usage-chart .bar")
    expect(bar).to_have_count(1)

    # Credits up the side, from 0 to at least the day's credits; dates along the bottom, from
    # the range's first day.
    ticks = page.locator("#usage-chart .y-axis text").all_text_contents()
    assert ticks[0] == "Credits" and ticks[1] == "0" and len(ticks) >= 3
    assert Decimal(ticks[-1].replace(",", "")) >= charged
    first = date.fromisoformat(page.locator("#usage-from").input_value())
    today = date.fromisoformat(page.locator("#usage-to").input_value())
    days = page.locator("#usage-chart .x-axis text").all_text_contents()
    assert days[0] == _short_day(first) and len(days) >= 4
    assert _overlapping_labels(page) == 0

    # The day's value on hover, and on focus (Tab from the range's button reaches the bar).
    tip = page.locator("#usage-tip")
    expect(tip).to_be_hidden()
    bar.hover()
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(f"demo:demo-chat: {charged} credits")
    expect(tip).to_contain_text(f"{today:%b} {today.day}, {today.year}")
    page.mouse.move(1, 1)
    expect(tip).to_be_hidden()
    page.get_by_role("button", name="Show", exact=True).focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('class')") == "bar"
    expect(tip).to_be_visible()
    expect(bar).to_have_attribute("aria-label", re.compile(f"demo:demo-chat: {charged} credits"))
    page.locator("#usage-figure").screenshot(path=str(screenshots / "usage-chart.png"))

    # The same numbers as a table, as the API groups them.
    page.get_by_text("The chart as a table").click()
    usage_range = (
        f"from={page.locator('#usage-from').input_value()}"
        f"&to={page.locator('#usage-to').input_value()}"
    )
    groups = _api(base, page, f"/api/credit/usage?group_by=day_model&{usage_range}")["groups"]
    rows = page.locator("#usage-days tbody tr")
    expect(rows).to_have_count(len(groups))
    assert [rows.nth(i).locator("td").all_inner_texts() for i in range(len(groups))] == [
        [*group["key"].split(" "), str(group["requests"]), group["credits"]] for group in groups
    ]
    assert _serious_violations(page) == []


def test_the_usage_chart_stacks_models_and_fits_a_year(browsing: Browsing) -> None:
    """Bars by model as the API groups them (an answer made up here: two models on three days),
    as tall as their credits; a year's dates do not overlap, at desktop or phone width."""
    page, screenshots = browsing.page, browsing.screenshots
    _start_a_chat(browsing)
    today = date.fromisoformat(page.locator("#usage-to").input_value())
    spent = {
        today - timedelta(days=20): ("1250.5", "249.5"),
        today - timedelta(days=9): ("300", "0.25"),
        today: ("2000", "1000"),
    }
    groups = [
        {"key": f"{day} {model}", "requests": 3, "credits": amount}
        for day, amounts in spent.items()
        for model, amount in zip(("openai:gpt-4o", "anthropic:claude-x"), amounts, strict=True)
    ]

    def made_up(route: Route) -> None:
        route.fulfill(json={"from": "", "to": "", "group_by": "day_model", "groups": groups})

    def by_day_and_model(url: str) -> bool:
        return "group_by=day_model" in url

    page.route(by_day_and_model, made_up)
    page.get_by_role("button", name="Show", exact=True).click()
    bars = page.locator("#usage-chart .bar")
    expect(bars).to_have_count(3)
    assert page.locator("#usage-legend li").all_inner_texts() == [
        "openai:gpt-4o",
        "anthropic:claude-x",
    ]
    expect(page.locator("#usage-chart .bar rect:not(.hit)")).to_have_count(6)
    heights = page.evaluate(
        """() => [...document.querySelectorAll("#usage-chart .bar")].map((bar) =>
             [...bar.querySelectorAll("rect:not(.hit)")].reduce(
               (sum, piece) => sum + piece.getBBox().height, 0))"""
    )
    totals = [sum(Decimal(amount) for amount in amounts) for amounts in spent.values()]
    for height, total in zip(heights, totals, strict=True):
        assert abs(height / heights[-1] - float(total / totals[-1])) < 0.01
    ticks = page.locator("#usage-chart .y-axis text").all_text_contents()[1:]
    assert Decimal(ticks[-1].replace(",", "")) >= totals[-1] and ticks[-1] == "3,000"
    page.locator("#usage-figure").screenshot(path=str(screenshots / "usage-chart-models.png"))

    # A year, by day: dates spaced so that none overlaps, and still at phone width.
    page.locator("#usage-from").fill((today - timedelta(days=365)).isoformat())
    page.get_by_role("button", name="Show", exact=True).click()
    expect(bars).to_have_count(3)
    labels = page.locator("#usage-chart .x-axis text")
    assert 4 <= labels.count() <= 20
    assert _overlapping_labels(page) == 0
    page.set_viewport_size({"width": 375, "height": 800})
    _wait_until(page, lambda: _overlapping_labels(page) == 0 and labels.count() <= 8)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#usage-figure").screenshot(path=str(screenshots / "usage-chart-phone.png"))
    page.unroute(by_day_and_model)


def test_numbers_for_humans_and_what_each_transaction_was_for(browsing: Browsing) -> None:
    """Credits grouped by thousands with their worth in dollars, amounts right-aligned, each
    transaction saying what it was for, and a refund shown as a refund."""
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    _start_a_chat(browsing)
    _send_and_wait_for_the_reply(page, "Hello Ada!")
    (conversation,) = _api(base, page, "/api/conversations")["items"]
    messages = _api(base, page, f"/api/conversations/{conversation['id']}/messages")["items"]
    reply = next(message for message in messages if message["role"] == "assistant")
    admin = json.loads(call("POST", f"{base}/api/auth/demo", body=b'{"role": "admin"}')[2])
    refunded = call(
        "POST",
        f"{base}/api/admin/credit/refund",
        admin["access_token"],
        body=json.dumps({"message_id": reply["id"], "reason": "wrong answer"}).encode(),
    )
    assert refunded[0] == 201, refunded
    page.reload()

    balance = _api(base, page, "/api/credit/balance")
    expect(page.locator("#balance")).to_have_text(_grouped(balance["balance"]))
    assert "," in page.locator("#balance").inner_text()  # 1,100 credits and more
    expect(page.locator("#balance-usd")).to_have_text(_dollars(balance["balance"]))
    expect(page.locator("#available-usd")).to_have_text(_dollars(balance["available"]))

    entries = _api(base, page, "/api/credit/transactions?limit=20&describe=true")["items"]
    rows = page.locator("#transactions tbody tr")
    expect(rows).to_have_count(len(entries))
    shown = [rows.nth(i).locator("td").all_inner_texts()[1:5] for i in range(len(entries))]
    assert shown == [
        [e["type"], e["description"], _grouped(e["amount"]), _grouped(e["balance_after"])]
        for e in entries
    ]
    assert [e["type"] for e in entries[:2]] == ["refund", "charge"]
    assert entries[0]["description"] == f"Refund of message {reply['id']}: wrong answer"
    assert entries[1]["description"] == "Chat with Ada (demo:demo-chat)"
    aligned = "[...document.querySelectorAll('#transactions td.amount, #transactions th.amount')]"
    aligned += ".map((cell) => getComputedStyle(cell).textAlign)"
    alignments = page.evaluate(aligned)
    assert len(alignments) == 2 * len(entries) + 2 and set(alignments) == {"right"}

    grants = page.locator("#grants tbody tr")
    expect(grants.first.locator("td").first).to_have_text("Refund")
    assert grants.first.locator("td").nth(1).inner_text().endswith("wrong answer")
    assert page.locator("#grants td.amount").count() == 2 * grants.count()
    assert _serious_violations(page) == []
    page.screenshot(path=str(screenshots / "dashboard-numbers.png"), full_page=True)


def test_the_admin_console(app: Flask, browsing: Browsing) -> None:
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    # Drift for the reconciliation section to show: a grant's remaining that no entry explains.
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(text("UPDATE grants SET remaining = remaining - 1"))
        db.session.remove()
    run_job_at(app, "reconcile", utcnow())

    page.goto(f"{base}/admin")
    assert _serious_violations(page) == []
    page.screenshot(path=str(screenshots / "admin-sign-in.png"))
    page.get_by_role("button", name="Sign in as the demo admin").click()
    users = page.locator("#users tbody tr")
    expect(users).to_have_count(2)

    # Drift is highlighted, row by row, as the API reports it.
    report = _api(base, page, "/api/admin/credit/reconciliation")
    assert report["drift"]
    expect(page.locator("#drift tr.drift")).to_have_count(len(report["drift"]))
    expect(page.locator("#reconciliation-verdict")).to_have_class("drift")

    # Find the demo user and open their page.
    page.get_by_label("Email contains").fill("USER@demo")
    page.get_by_role("button", name="Find").click()
    expect(users).to_have_count(1)
    page.get_by_role("button", name="Open user@demo.creditapp").click()
    expect(page.locator("#user-title")).to_have_text("user@demo.creditapp")
    user_id = _api(base, page, "/api/admin/users?q=user@demo")["items"][0]["id"]
    credit_path = f"/api/admin/users/{user_id}/credit"
    before = _api(base, page, credit_path)
    figures = page.locator("#user-figures")
    assert figures.locator("[data-field=balance]").inner_text() == before["balance"]
    # The user's transactions load after the title: wait for them, do not count at once.
    expect(page.locator("#user-transactions tbody tr")).to_have_count(
        len(_api(base, page, f"/api/admin/users/{user_id}/transactions")["items"])
    )

    # A double click on Grant grants once.
    page.locator("#grant-form").get_by_label("Credits", exact=True).fill("5")
    page.locator("#grant-reason").fill("goodwill")
    page.get_by_role("button", name="Grant", exact=True).dblclick()
    expect(page.locator("#grant-form .outcome")).to_contain_text("Granted 5 credits")
    after = _api(base, page, credit_path)
    goodwill = [grant for grant in after["grants"] if grant["reason"] == "goodwill"]
    assert [grant["amount"] for grant in goodwill] == ["5"]
    assert Decimal(after["balance"]) == Decimal(before["balance"]) + 5
    grants = _api(base, page, f"/api/admin/credit/audit?user_id={user_id}&action=grant")
    assert [record["details"].get("reason") for record in grants["items"]].count("goodwill") == 1
    expect(figures.locator("[data-field=balance]")).to_have_text(after["balance"])

    # A grant made whose answer is lost (a 503 in its place): the retry sends the same key and
    # is answered with the first one's grant, not a second grant.
    keys: list[str] = []

    def lose_the_first_answer(route: Route) -> None:
        keys.append(route.request.headers["idempotency-key"])
        made = route.fetch()
        if len(keys) == 1:
            assert made.status == 201
            lost = {"code": "service_unavailable", "message": "Try again.", "details": {}}
            route.fulfill(status=503, json={"error": lost})
        else:
            route.fulfill(response=made)

    page.route("**/api/admin/credit/grant", lose_the_first_answer)
    page.locator("#grant-reason").fill("lost answer")
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.locator("#grant-form .outcome")).to_have_text("Try again.")
    browsing.meant_refusals.append((503, "/api/admin/credit/grant"))
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.locator("#grant-form .outcome")).to_contain_text("Granted 5 credits")
    page.unroute("**/api/admin/credit/grant")
    assert len(keys) == 2 and keys[0] == keys[1]
    after = _api(base, page, credit_path)
    assert [g["reason"] for g in after["grants"]].count("lost answer") == 1

    # An adjustment, with its reason; a refusal is shown with what was wrong.
    page.locator("#adjust-form").get_by_label("Credits (negative to take away)").fill("-1.5")
    page.locator("#adjust-reason").fill("correction")
    page.get_by_role("button", name="Adjust", exact=True).click()
    expect(page.locator("#adjust-form .outcome")).to_contain_text("Adjusted by -1.5 credits")
    adjusted = Decimal(after["balance"]) - Decimal("1.5")
    assert _api(base, page, credit_path)["balance"] == str(adjusted)
    page.locator("#adjust-form").get_by_label("Credits (negative to take away)").fill("-100000")
    page.locator("#adjust-reason").fill("too much")
    page.get_by_role("button", name="Adjust", exact=True).click()
    browsing.meant_refusals.append((409, "/api/admin/credit/adjust"))
    expect(page.locator("#adjust-form .outcome")).to_contain_text(
        "The adjustment would take more than the account has available."
    )
    assert _api(base, page, credit_path)["balance"] == str(adjusted)

    # Compensations: processed on request.
    page.get_by_role("button", name="Process now").click()
    expect(page.locator("#process-form .outcome")).to_contain_text("Processing 0 pending")

    # A price added through the form is the newest row of the price book.
    page.get_by_label("Provider").select_option("demo")
    page.get_by_label("Model").fill("demo-next")
    page.get_by_label("Input", exact=True).fill("0.25")
    page.get_by_label("Output", exact=True).fill("1.5")
    page.get_by_role("button", name="Add price").click()
    expect(page.locator("#price-form .outcome")).to_contain_text("added for demo:demo-next")
    newest = _api(base, page, "/api/admin/pricing?limit=1")["items"][0]
    assert (newest["model"], newest["input"], newest["output"]) == ("demo-next", "0.25", "1.5")
    first_price = page.locator("#prices tbody tr").first.locator("td")
    assert first_price.all_inner_texts()[:4] == [newest["id"], "demo", "demo-next", "0.25"]
    tiers = _api(base, page, "/api/admin/tiers")["items"]
    expect(page.locator("#tiers tbody tr")).to_have_count(len(tiers))

    assert _serious_violations(page) == []
    page.screenshot(path=str(screenshots / "admin.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})
    page.screenshot(path=str(screenshots / "admin-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    # A user's token does not open the console.
    user_token = json.loads(call("POST", f"{base}/api/auth/demo")[2])["access_token"]
    page.evaluate(f"sessionStorage.setItem('creditapp.access_token', {json.dumps(user_token)})")
    page.reload()
    expect(page.locator("#sign-in-error")).to_have_text(
        "user@demo.creditapp is not an admin: the console is for admins."
    )


# Google Identity Services as far as the page uses it: a button that hands over an ID token.
FAKE_GOOGLE_SCRIPT = """
window.google = { accounts: { id: {
  initialize(config) { window.googleConfig = config; },
  renderButton(place) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Sign in with Google";
    button.addEventListener("click", () => window.googleConfig.callback({ credential: ID_TOKEN }));
    place.append(button);
  },
} } };
"""


def test_google_sign_in_on_the_page(app: Flask, tmp_path: Path) -> None:
    """With GOOGLE_CLIENT_ID set the page loads Google's script (here a stand-in, as the
    machine is offline), and the ID token its button hands over signs the person in."""
    google = GoogleCertificates()
    try:
        env = {"GOOGLE_CLIENT_ID": CLIENT_ID, "GOOGLE_CERTS_URL": google.url}
        with browse(app, tmp_path, **env) as browsing:
            page = browsing.page
            script = FAKE_GOOGLE_SCRIPT.replace("ID_TOKEN", json.dumps(google.id_token()))
            page.route(
                GOOGLE_SCRIPT,
                lambda route: route.fulfill(body=script, content_type="text/javascript"),
            )
            page.goto(f"{browsing.base}/")
            page.get_by_role("button", name="Sign in with Google").click()
            expect(page.locator("#balance")).not_to_have_text("\u2013")
            assert page.evaluate("window.googleConfig.client_id") == CLIENT_ID
            me = _api(browsing.base, page, "/api/me")
            assert me["email"] == "ada@example.com"
            assert page.locator("#balance").inner_text() == _grouped(
                _api(browsing.base, page, "/api/credit/balance")["balance"]
            )
    finally:
        google.close()
    elsewhere = [url for url in browsing.requested if not url.startswith(browsing.base)]
    assert elsewhere == [GOOGLE_SCRIPT]


def test_googles_script_is_allowed_only_when_google_sign_in_is_configured(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in ("/", "/admin"):
        page = client.get(path)
        policy = page.headers["Content-Security-Policy"]
        assert "accounts.google.com" not in policy
        assert "accounts.google.com" not in page.get_data(as_text=True)
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    monkeypatch.setitem(app.config, "GOOGLE_CLIENT_IDS", [CLIENT_ID, "creditapp-ios.example"])
    for path in ("/", "/admin"):
        page = client.get(path)
        directives = dict(
            directive.split(" ", 1)
            for directive in page.headers["Content-Security-Policy"].split("; ")
        )
        assert directives["script-src"] == f"'self' {GOOGLE_SCRIPT}"
        assert directives["frame-src"] == "https://accounts.google.com/gsi/"
        assert f'data-client-id="{CLIENT_ID}"' in page.get_data(as_text=True)
