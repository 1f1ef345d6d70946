"""The admin console in a real browser (Debian's Chromium through Playwright, against a real
gunicorn in demo mode, as in test_dashboard), one test per thing an admin must be able to see
or do. Every state is checked with axe (no serious or critical violation) and photographed at
desktop and phone width into DASHBOARD_SCREENSHOTS (default: the test's own folder)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import update

from creditapp.auth.models import User
from creditapp.extensions import db
from tests.conftest import utcnow
from tests.fake_stripe import FakeStripe
from tests.helpers import add_price, run_job_at
from tests.integration.live_server import call
from tests.integration.test_dashboard import Browsing, _api, _serious_violations, browse

pytestmark = pytest.mark.real_clock
DEMO_USER = "user@demo.creditapp"


@pytest.fixture
def console(app: Flask, tmp_path: Path) -> Iterator[Browsing]:
    """The console signed in as the demo admin."""
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    # Admin actions come faster than the sensitive limit (10 in 5 minutes) here: not its test.
    with browse(app, screenshots, RATELIMIT_ENABLED="false") as browsing:
        browsing.page.goto(f"{browsing.base}/admin")
        browsing.page.get_by_role("button", name="Sign in as the demo admin").click()
        expect(browsing.page.locator("#users tbody tr")).to_have_count(2)
        yield browsing


def _photograph(browsing: Browsing, name: str) -> None:
    """axe finds nothing serious; the page at desktop width, then at phone width (no sideways
    scrolling), then back."""
    page = browsing.page
    assert _serious_violations(page) == []
    page.screenshot(path=str(browsing.screenshots / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})
    page.screenshot(path=str(browsing.screenshots / f"{name}-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.set_viewport_size({"width": 1100, "height": 900})


def _open_demo_user(page: Page) -> None:
    page.get_by_role("button", name=f"Open {DEMO_USER}").click()
    expect(page.locator("#user-title")).to_have_text(DEMO_USER)


def _refused(browsing: Browsing, path: str, submit: Locator) -> Any:
    """The API's refusal of what a click on `submit` sent to `path` (meant: the test's)."""
    with browsing.page.expect_response(f"**{path}") as answer:
        submit.click()
    assert answer.value.status == 400
    browsing.meant_refusals.append((400, path))
    return answer.value.json()["error"]


def _shows_beside(field: Locator, problem: str) -> None:
    """`field` is marked invalid and described by its problem, an alert beside it."""
    expect(field).to_have_attribute("aria-invalid", "true")
    note = field.page.locator(f"#{field.get_attribute('aria-describedby')}")
    expect(note).to_have_attribute("role", "alert")
    expect(note).to_have_text(problem)
    expect(note).to_have_class("field-error")


def test_a_search_overtaking_the_first_listing_is_what_the_list_shows(
    app: Flask, tmp_path: Path
) -> None:
    """The console lists users as it opens; a search sent before that listing's answer came is
    answered first here (the listing is held back), and the listing, come last, must not
    replace the search's result with every user."""
    with browse(app, tmp_path, RATELIMIT_ENABLED="false") as browsing:
        page = browsing.page
        held: list[Any] = []

        def unfiltered(url: str) -> bool:
            return "/api/admin/users?" in url and "q=" not in url

        page.route(unfiltered, lambda route: held.append(route))
        page.goto(f"{browsing.base}/admin")
        page.get_by_role("button", name="Sign in as the demo admin").click()
        for _ in range(600):  # the listing, asked as the console opens, is held (30 s at most)
            if held:
                break
            page.wait_for_timeout(50)
        assert held
        page.locator("#user-query").fill(DEMO_USER)
        page.locator("#user-search button").click()
        expect(page.locator("#users tbody tr")).to_have_count(1)
        with page.expect_response(lambda answer: unfiltered(answer.url)) as listing:
            held[0].continue_()
        listing.value.finished()
        page.unroute(unfiltered)
        # Two turns of the page's event loop: the listing's answer has been handled by then.
        page.evaluate("() => new Promise((done) => setTimeout(() => setTimeout(done)))")
        expect(page.locator("#users tbody tr")).to_have_count(1)
        expect(page.locator("#users tbody tr td").first).to_have_text(DEMO_USER)


def test_a_refused_action_names_its_field_beside_it(console: Browsing) -> None:
    page = console.page
    _open_demo_user(page)
    grant, amount = page.locator("#grant-form"), page.locator("#grant-amount")
    grant_button = page.get_by_role("button", name="Grant", exact=True)
    outcome = grant.locator(".outcome")

    # A grant that works, then one of 0 credits: the success is gone, the amount is wrong.
    amount.fill("5")
    page.locator("#grant-reason").fill("goodwill")
    grant_button.click()
    expect(outcome).to_contain_text("Granted 5 credits")
    for bad in ("0", "99999999999999"):
        amount.fill(bad)
        error = _refused(console, "/api/admin/credit/grant", grant_button)
        _shows_beside(amount, " ".join(error["details"]["amount"]))
        expect(outcome).to_have_text(error["message"])
        expect(outcome).to_have_class("outcome refused")
        expect(grant.locator(".field-error")).to_have_count(1)
        expect(page.locator("#grant-reason")).not_to_have_attribute("aria-invalid", "true")
    _photograph(console, "admin-field-errors")

    # Put right, the error is gone with the next try.
    amount.fill("1")
    grant_button.click()
    expect(outcome).to_contain_text("Granted 1 credits")
    expect(outcome).not_to_have_class("outcome refused")
    expect(amount).not_to_have_attribute("aria-invalid", "true")
    expect(grant.locator(".field-error")).to_have_count(0)

    # A price of -1: beside the price's field.
    page.get_by_label("Model", exact=True).fill("demo-negative")
    page.get_by_label("Input", exact=True).fill("-1")
    page.get_by_label("Output", exact=True).fill("1")
    error = _refused(console, "/api/admin/pricing", page.get_by_role("button", name="Add price"))
    _shows_beside(page.locator("#price-input"), " ".join(error["details"]["input"]))
    expect(page.locator("#price-output")).not_to_have_attribute("aria-invalid", "true")
    assert _serious_violations(page) == []


def test_reconciliation_says_it_has_not_run_and_runs_on_request(
    app: Flask, console: Browsing
) -> None:
    page = console.page
    verdict, ran_at = page.locator("#reconciliation-verdict"), page.locator("[data-field=ran-at]")
    expect(verdict).to_have_class("unknown")
    expect(verdict).to_contain_text("has not run yet")
    expect(verdict).not_to_contain_text("No drift")
    expect(ran_at).to_have_text("never")
    page.locator("#reconciliation-title").scroll_into_view_if_needed()
    _photograph(console, "admin-reconciliation-not-run")

    # Run now queues the job; its report shows once a worker (the test, here) has run it.
    page.get_by_role("button", name="Run now").click()
    outcome = page.locator("#reconcile-form .outcome")
    expect(outcome).to_contain_text("Queued (task ")
    report = run_job_at(app, "reconcile", utcnow())
    expect(outcome).to_contain_text("Reconciliation ran at", timeout=15_000)
    expect(outcome).to_contain_text(f"no drift in {report['checked_accounts']} account(s)")
    expect(verdict).to_have_class("fine")
    expect(verdict).to_have_text("No drift: every balance equals the sum of its entries.")
    expect(ran_at).not_to_have_text("never")
    shown = _api(console.base, page, "/api/admin/credit/reconciliation")
    assert shown["checked_accounts"] == report["checked_accounts"] and shown["drift"] == []
    assert _serious_violations(page) == []


def _token(page: Page) -> str:
    return str(page.evaluate("sessionStorage.getItem('creditapp.access_token')"))


def _post(base: str, path: str, token: str, body: dict[str, Any], key: str = "") -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    status, _headers, answer = call(
        "POST", f"{base}{path}", token, json.dumps(body).encode(), headers
    )
    assert status in (200, 201), answer
    return json.loads(answer)


def _demo_user_chats(base: str) -> str:
    """The demo user says hello to the demo character; the reply's id."""
    token = json.loads(call("POST", f"{base}/api/auth/demo")[2])["access_token"]
    characters = json.loads(call("GET", f"{base}/api/characters", token)[2])["items"]
    character = next(c for c in characters if c["name"] == "Ada")
    conversation = _post(base, "/api/conversations", token, {"character_id": character["id"]})
    path = f"/api/conversations/{conversation['id']}/messages"
    return str(_post(base, path, token, {"content": "Hello Ada"}, key="hello-ada")["reply"]["id"])


def _right_aligned(cells: Locator) -> None:
    assert cells.count() > 0
    for index in range(cells.count()):
        expect(cells.nth(index)).to_have_class("amount")
        assert cells.nth(index).evaluate("cell => getComputedStyle(cell).textAlign") == "right"


def test_amounts_compensations_and_the_price_book_read_as_people_read_them(
    app: Flask, console: Browsing
) -> None:
    base, page = console.base, console.page
    # A compensation owed to the demo user: named by email, its amount right-aligned.
    reply_id = _demo_user_chats(base)
    body = {"message_id": reply_id, "reason": "a bad answer"}
    refund = _post(base, "/api/admin/credit/refund", _token(page), body)
    page.get_by_role("button", name="Show", exact=True).click()
    compensation = page.locator("#compensations tbody tr").first.locator("td")
    expect(compensation.nth(1)).to_have_text(DEMO_USER)
    expect(compensation.nth(2)).to_have_text(refund["amount"])
    _right_aligned(page.locator("#compensations tbody td:nth-child(3)"))

    # Thousands separators: the demo user's 1000 credits.
    _open_demo_user(page)
    demo_credits = page.locator("#user-grants tbody tr", has_text="demo credits").locator("td")
    expect(demo_credits.nth(1)).to_have_text("1,000")
    _right_aligned(page.locator("#user-grants tbody td:nth-child(2)"))

    # The price book is searched and paged: 25 prices match, 20 to a page.
    for number in range(25):
        add_price(app, "openai", f"paged-model-{number:02}", input="1234.5", output="2")
    prices = page.locator("#prices tbody tr")
    page.get_by_label("Search the price book").fill("PAGED-model")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#prices-shown")).to_have_text("Prices 1 to 20")
    expect(prices).to_have_count(20)
    first = _api(base, page, "/api/admin/pricing?q=paged-model&limit=20")
    assert prices.first.locator("td").all_inner_texts()[:4] == [
        first["items"][0]["id"],
        "openai",
        "paged-model-24",
        "1,234.5",
    ]
    _right_aligned(page.locator("#prices tbody td:nth-child(4)"))
    expect(page.get_by_role("button", name="Newer prices")).to_be_hidden()
    page.get_by_role("button", name="Older prices").click()
    expect(page.locator("#prices-shown")).to_have_text("Prices 21 to 25, the last")
    expect(prices).to_have_count(5)
    expect(prices.last.locator("td").nth(2)).to_have_text("paged-model-00")
    expect(page.get_by_role("button", name="Older prices")).to_be_hidden()
    page.locator("#prices-title").scroll_into_view_if_needed()
    _photograph(console, "admin-price-book")
    assert _serious_violations(page) == []
    page.get_by_role("button", name="Newer prices").click()
    expect(page.locator("#prices-shown")).to_have_text("Prices 1 to 20")
    expect(prices.first.locator("td").nth(2)).to_have_text("paged-model-24")
    page.get_by_label("Search the price book").fill("no such model")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#prices-shown")).to_have_text("No price matches.")
    expect(prices).to_have_text(["None."])
    assert _serious_violations(page) == []


def test_the_audit_log_and_a_refund_of_a_users_message(console: Browsing) -> None:
    base, page = console.base, console.page
    _demo_user_chats(base)
    _open_demo_user(page)
    user_id = _api(base, page, "/api/admin/users?q=user@demo")["items"][0]["id"]
    charges = _api(base, page, f"/api/admin/users/{user_id}/transactions?type=charge")["items"]
    assert len(charges) == 1
    charged = charges[0]["amount"].removeprefix("-")
    before = _api(base, page, f"/api/admin/users/{user_id}/credit")["balance"]

    # The message's charge has its Refund button; a refund says why, once.
    refund_form = page.locator("#refund-form")
    expect(refund_form.locator("#user-charges tbody tr")).to_have_count(1)
    page.get_by_label("Reason for the refund").fill("a bad answer")
    refund = page.get_by_role("button", name=f"Refund the charge of {charged} credits")
    refund.click()
    outcome = refund_form.locator(".outcome")
    expect(outcome).to_contain_text(f"Refunded {charged} credits")
    balance = _api(base, page, f"/api/admin/users/{user_id}/credit")["balance"]
    assert Decimal(balance) == Decimal(before) + Decimal(charged)
    expect(page.locator("#user-figures [data-field=balance]")).to_have_text(balance)
    refunds = _api(base, page, "/api/admin/credit/compensations")["items"]
    assert [(c["user_email"], c["amount"]) for c in refunds] == [(DEMO_USER, charged)]
    refund.click()
    console.meant_refusals.append((409, "/api/admin/credit/refund"))
    expect(outcome).to_have_class("outcome refused")
    expect(outcome).to_contain_text("already")

    # The user's audit log: the refund first, with its reason.
    page.get_by_role("button", name="Show this user's audit log").click()
    expect(page.get_by_label("User's email", exact=True)).to_have_value(DEMO_USER)
    records = page.locator("#audit tbody tr")
    trail = _api(base, page, f"/api/admin/credit/audit?user_id={user_id}&limit=20")["items"]
    expect(records).to_have_count(len(trail))
    newest = records.first.locator("td")
    expect(newest.nth(1)).to_have_text("refund")
    expect(newest.nth(2)).to_have_text(DEMO_USER)
    expect(newest.nth(6)).to_contain_text("a bad answer")
    expect(page.locator("#audit tbody td:nth-child(3)")).to_have_text([DEMO_USER] * len(trail))
    _right_aligned(page.locator("#audit tbody td:nth-child(6)"))

    # Filtered by action too; then by dates the wrong way round, and by no user.
    page.get_by_label("Action", exact=True).fill("grant")
    page.get_by_role("button", name="Show the log").click()
    grants = _api(base, page, f"/api/admin/credit/audit?user_id={user_id}&action=grant")["items"]
    expect(records).to_have_count(len(grants))
    expect(page.locator("#audit tbody td:nth-child(2)")).to_have_text(["grant"] * len(grants))
    page.get_by_label("From", exact=True).fill("2026-03-02T10:00")
    page.get_by_label("To", exact=True).fill("2026-03-01T10:00")
    with page.expect_response("**/api/admin/credit/audit?*") as answer:
        page.get_by_role("button", name="Show the log").click()
    console.meant_refusals.append((400, "/api/admin/credit/audit"))
    problem = " ".join(answer.value.json()["error"]["details"]["from"])
    _shows_beside(page.get_by_label("From", exact=True), problem)
    page.locator("#audit-section").scroll_into_view_if_needed()
    _photograph(console, "admin-audit-log")
    page.get_by_label("From", exact=True).fill("")
    page.get_by_label("To", exact=True).fill("")
    page.get_by_label("User's email", exact=True).fill("nobody@nowhere.example")
    page.get_by_role("button", name="Show the log").click()
    _shows_beside(page.get_by_label("User's email", exact=True), "No user's email contains this.")
    assert _serious_violations(page) == []


def test_a_users_transactions_say_what_they_were_for_and_sign_out_forgets_the_user(
    app: Flask, console: Browsing
) -> None:
    """The user's transactions have the dashboard's For column (a charge's character and
    model, a refund's message and reason) and a refund's grant reads as a refund; signed out,
    nothing of the user open stays for the next admin on this tab."""
    base, page = console.base, console.page
    reply_id = _demo_user_chats(base)
    body = {"message_id": reply_id, "reason": "a bad answer"}
    _post(base, "/api/admin/credit/refund", _token(page), body)
    _open_demo_user(page)
    user_id = _api(base, page, "/api/admin/users?q=user@demo")["items"][0]["id"]
    described = _api(base, page, f"/api/admin/users/{user_id}/transactions?describe=true")
    charge = next(entry for entry in described["items"] if entry["type"] == "charge")
    assert charge["description"].startswith("Chat with Ada (")

    table = page.locator("#user-transactions table")
    expect(table.locator("thead th")).to_have_text(
        ["When", "Type", "For", "Amount", "Balance after", "Receipt"]
    )
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(len(described["items"]))
    expect(rows.first.locator("td").nth(1)).to_have_text("refund")
    expect(rows.first.locator("td").nth(2)).to_have_text(
        f"Refund of message {reply_id}: a bad answer"
    )
    expect(rows.nth(1).locator("td").nth(1)).to_have_text("charge")
    expect(rows.nth(1).locator("td").nth(2)).to_have_text(charge["description"])
    # The refund's grant reads as a refund, not as an admin's grant.
    refund_grant = page.locator("#user-grants tbody tr", has_text="a bad answer").locator("td")
    expect(refund_grant.first).to_have_text("refund")
    # The user's charges name what they paid for too.
    expect(page.locator("#user-charges tbody tr").first.locator("td").nth(2)).to_have_text(
        charge["description"]
    )
    page.locator("#user-transactions").scroll_into_view_if_needed()
    _photograph(console, "admin-described-transactions")

    # Signed out, then in as another admin (the demo user, made an admin) on the same tab.
    with app.app_context():
        db.session.execute(update(User).where(User.email == DEMO_USER).values(role="admin"))
        db.session.commit()
        db.session.remove()
    page.get_by_role("button", name="Sign out").click()
    sign_in = page.get_by_role("button", name="Sign in as the demo admin")
    sign_in.wait_for()
    expect(page.locator("#user")).to_be_hidden()
    expect(page.locator("#user-figures > *")).to_have_count(0)
    page.route(
        "**/api/auth/demo",
        lambda route: route.continue_(
            post_data=json.dumps({}),
            headers={**route.request.headers, "content-type": "application/json"},
        ),
    )
    sign_in.click()
    expect(page.locator("#users tbody tr")).to_have_count(2)
    page.unroute("**/api/auth/demo")
    assert _api(base, page, "/api/me")["email"] == DEMO_USER
    expect(page.locator("#user")).to_be_hidden()
    expect(page.locator("#user-figures > *")).to_have_count(0)
    expect(page.locator("#user-title")).not_to_have_text(DEMO_USER)
    expect(page.locator("#user-transactions tbody tr")).to_have_count(0)
    expect(page.locator("#user-grants tbody tr")).to_have_count(0)
    # (The compensations list, B's own, names the refund: the user view names nothing.)
    left = page.locator("#user").text_content() or ""
    assert "a bad answer" not in left and "Chat with Ada" not in left and DEMO_USER not in left
    assert _serious_violations(page) == []


def test_a_users_api_keys_and_revoking_one(console: Browsing) -> None:
    """The user's keys in the user's view, each with its limit and status; Revoke asks first
    (a no changes nothing), then the row says revoked and the key is refused."""
    base, page = console.base, console.page
    _open_demo_user(page)
    expect(page.locator("#user-keys tbody tr")).to_have_text(["No keys yet."])

    token = json.loads(call("POST", f"{base}/api/auth/demo")[2])["access_token"]
    body = {"name": "billing job", "limit": "20", "limit_period": "month"}
    key = _post(base, "/api/keys", token, body, key="billing-job-key")
    _open_demo_user(page)
    row = page.locator("#user-keys tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td")).to_have_text(
        [
            *("billing job", f"{key['prefix']}\u2026", "20 a month", "0"),
            *("all the tier allows", "never", "never", "active", "Revoke"),
        ]
    )
    revoke = row.get_by_role("button", name="Revoke the key billing job")
    _photograph(console, "admin-user-keys")

    page.once("dialog", lambda dialog: dialog.dismiss())
    revoke.click()
    expect(row.locator("td.status")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(f"**/api/admin/keys/{key['id']}") as answer:
        revoke.click()
    assert answer.value.status == 204
    expect(row.locator("td.status")).to_have_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    assert json.loads(call("GET", f"{base}/api/keys/{key['id']}", token)[2])["revoked_at"]
    call_body = {"model": "demo/demo-chat", "messages": [{"role": "user", "content": "Hi"}]}
    status, _headers, refused = call(
        "POST", f"{base}/v1/chat/completions", key["key"], json.dumps(call_body).encode()
    )
    assert status == 401 and json.loads(refused)["error"]["code"] == "invalid_api_key"
    assert _serious_violations(page) == []


def test_a_users_purchases_show_what_a_refund_took_back_and_its_shortfall(
    console: Browsing, fake_stripe: FakeStripe
) -> None:
    """Two purchases paid through the fake Stripe; the first refunded after the user had spent
    all but 4,000 credits: 4,000 are taken back, the other 1,000 are its shortfall."""
    page, base = console.page, console.base
    fake_stripe.reset()
    earlier_receiver = fake_stripe.webhook_url
    fake_stripe.webhook_url = f"{base}/api/webhooks/stripe"
    try:
        status, _headers, raw = call("POST", f"{base}/api/auth/demo")
        assert status == 200, raw
        user = json.loads(raw)["access_token"]
        sessions = []
        for number, credits in enumerate(("5000", "20000")):
            status, _headers, raw = call(
                "POST",
                f"{base}/api/credit/purchases",
                user,
                json.dumps({"credits": credits}).encode(),
                {"Idempotency-Key": f"purchase-{number}"},
            )
            assert status == 201, raw
            sessions.append(json.loads(raw)["checkout_url"].rsplit("/", 1)[1])
            fake_stripe.pay(sessions[-1])
        balance = Decimal(json.loads(call("GET", f"{base}/api/credit/balance", user)[2])["balance"])
        admin = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
        adjustment = {"user_id": "2", "amount": str(4000 - balance), "reason": "spent"}
        status, _headers, raw = call(
            "POST",
            f"{base}/api/admin/credit/adjust",
            admin,
            json.dumps(adjustment).encode(),
            {"Idempotency-Key": "spent"},
        )
        assert (status, json.loads(raw)["balance"]["balance"]) == (200, "4000")
        fake_stripe.refund(sessions[0])
    finally:
        fake_stripe.webhook_url = earlier_receiver
        fake_stripe.reset()

    _open_demo_user(page)
    rows = page.locator("#user-purchases tbody tr")
    expect(rows).to_have_count(2)
    newest, refunded = rows.nth(0), rows.nth(1)
    assert newest.locator("td").all_inner_texts()[1:] == [
        "20,000",
        "$20.00",
        "Paid",
        "\u2013",
        "\u2013",
    ]
    assert refunded.locator("td").all_inner_texts()[1:] == [
        "5,000",
        "$5.00",
        "Refunded",
        "4,000",
        "1,000",
    ]
    expect(refunded.locator("td.shortfall")).to_have_text("1,000")
    expect(newest.locator("td.shortfall")).to_have_count(0)
    (listed, _paid) = _api(base, page, "/api/admin/users/2/purchases")["items"][::-1]
    assert (listed["clawed_back"], listed["shortfall"]) == ("4000", "1000")
    page.locator("#user-purchases").scroll_into_view_if_needed()
    page.locator("#user-purchases").screenshot(
        path=str(console.screenshots / "admin-purchases.png")
    )
    _photograph(console, "admin-user-purchases")
