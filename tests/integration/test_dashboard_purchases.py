"""Buying credits in a real browser (Debian's Chromium through Playwright, against a real
gunicorn in demo mode, as in test_dashboard), from the dashboard to the fake Stripe's payment
page and back: paid, the purchase's page says so and shows the balance risen by the credits,
and the dashboard lists the purchase paid; cancelled, the page says so and the balance is
unchanged; a purchase still being confirmed is watched until Stripe's webhook arrives; an amount
outside the limits is refused beside its field, and Stripe unreachable is said as such. axe
finds nothing serious; screenshots go to DASHBOARD_SCREENSHOTS."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from tests.fake_stripe import ERROR, FakeStripe
from tests.integration import live_server
from tests.integration.live_server import call
from tests.integration.test_dashboard import (
    Browsing,
    _api,
    _grouped,
    _serious_violations,
    browse,
)

pytestmark = pytest.mark.real_clock
PURCHASES = "/api/credit/purchases"


@pytest.fixture
def shop(
    app: Flask, fake_stripe: FakeStripe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Browsing]:
    """The dashboard on a live server that Stripe (the fake) sends buyers and events back to:
    its PUBLIC_BASE_URL is its own address, chosen before it starts (the live server takes the
    port chosen here)."""
    port = live_server.free_port()
    monkeypatch.setattr(live_server, "free_port", lambda: port)
    base = f"http://127.0.0.1:{port}"
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    fake_stripe.reset()
    earlier_receiver = fake_stripe.webhook_url
    fake_stripe.webhook_url = f"{base}/api/webhooks/stripe"
    try:
        with browse(app, screenshots, PUBLIC_BASE_URL=base, RATELIMIT_ENABLED="false") as shop:
            yield shop
    finally:
        fake_stripe.webhook_url = earlier_receiver
        fake_stripe.reset()


def _sign_in(shop: Browsing) -> tuple[Page, Decimal]:
    """The demo user on the dashboard: the page, and the balance."""
    page = shop.page
    page.goto(f"{shop.base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")  # the placeholder dash
    expect(page.locator("#purchases tbody tr").first).not_to_have_text("")
    return page, Decimal(_api(shop.base, page, "/api/credit/balance")["balance"])


def _buy(page: Page, credits: str) -> None:
    page.get_by_label("Credits", exact=True).fill(credits)
    page.get_by_role("button", name="Buy", exact=True).click()


def _on_checkout(page: Page, fake_stripe: FakeStripe) -> str:
    """The browser on the fake Stripe's payment page: the Checkout Session's id."""
    page.wait_for_url(re.compile(rf"^{re.escape(fake_stripe.root)}/checkout/cs_test_\w+$"))
    return page.url.rsplit("/", 1)[1]


def _purchase_page(shop: Browsing, outcome: str) -> str:
    """The browser back on the purchase's page, as Stripe sends it: the purchase's id."""
    pattern = rf"^{re.escape(shop.base)}/purchases/(\d+)\?checkout={outcome}$"
    shop.page.wait_for_url(re.compile(pattern))
    found = re.match(pattern, shop.page.url)
    assert found is not None
    return found[1]


def test_credits_bought_on_the_dashboard_are_paid_on_stripe_and_added(
    shop: Browsing, fake_stripe: FakeStripe
) -> None:
    page, before = _sign_in(shop)
    section = page.locator("#buy-section")
    expect(page.locator("#purchases tbody tr")).to_have_text(["No purchases yet."])
    expect(page.locator("#buy-credits-hint")).to_have_text(
        "From 5,000 to 1,000,000 credits, in tens."
    )
    # The price follows the amount as it is typed: 1 credit is $0.001.
    price = page.locator("#buy-price")
    expect(price).to_have_text("$5.00")
    page.get_by_label("Credits", exact=True).fill("123450")
    expect(price).to_have_text("$123.45")
    assert _serious_violations(page) == []

    # Below the least: refused beside the field, with the limits the service holds.
    field = page.locator("#buy-credits")
    field.fill("4990")
    expect(price).to_have_text("$4.99")
    with page.expect_response(f"**{PURCHASES}") as answer:
        page.get_by_role("button", name="Buy", exact=True).click()
    assert answer.value.status == 400
    shop.meant_refusals.append((400, PURCHASES))
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_attribute("aria-describedby", "buy-credits-error buy-credits-hint")
    expect(page.locator("#buy-credits-error")).to_have_text("From 5000 to 1000000 credits.")
    expect(page.locator("#buy-form .outcome")).to_have_class("outcome refused")
    assert _serious_violations(page) == []
    section.screenshot(path=str(shop.screenshots / "buy-credits-refused.png"))
    assert _api(shop.base, page, PURCHASES)["items"] == []

    # 5,000 credits: Stripe's payment page asks $5.00; paid, the browser comes back to the
    # purchase's page, which says so and shows the balance risen by the credits.
    field.fill("5000")
    expect(price).to_have_text("$5.00")
    expect(field).not_to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Buy", exact=True).click()
    session_id = _on_checkout(page, fake_stripe)
    expect(page.locator("#amount")).to_have_text("5.00 USD")
    page.get_by_role("button", name="Pay").click()
    purchase_id = _purchase_page(shop, "success")
    expect(page.locator("#purchase-state")).to_have_text("Payment received: 5,000 credits added.")
    expect(page.locator("#balance")).to_have_text(_grouped(str(before + 5000)))
    expect(page.locator("#purchase-credits")).to_have_text("5,000")
    expect(page.locator("#purchase-price")).to_have_text("$5.00")
    expect(page.locator("#purchase-status")).to_have_text("Paid")
    purchase = _api(shop.base, page, f"{PURCHASES}/{purchase_id}")
    assert (purchase["status"], purchase["credits"], purchase["amount_cents"]) == (
        "paid",
        "5000",
        500,
    )
    assert fake_stripe.session(session_id)["client_reference_id"] == purchase_id
    assert _api(shop.base, page, "/api/credit/balance")["balance"] == str(before + 5000)
    assert _serious_violations(page) == []
    page.screenshot(path=str(shop.screenshots / "purchase-paid.png"), full_page=True)

    # Back on the dashboard: the purchase listed paid, and its grant among the grants.
    page.get_by_role("link", name="Back to your dashboard").click()
    expect(page.locator("#balance")).to_have_text(_grouped(str(before + 5000)))
    row = page.locator("#purchases tbody tr")
    expect(row).to_have_count(1)
    assert row.locator("td").all_inner_texts()[1:] == ["5,000", "$5.00", "Paid", "\u2013", "\u2013"]
    expect(page.locator("#grants tbody tr").filter(has_text="Purchase")).to_have_count(1)
    assert _serious_violations(page) == []
    section.screenshot(path=str(shop.screenshots / "buy-credits.png"))
    page.set_viewport_size({"width": 375, "height": 800})
    section.screenshot(path=str(shop.screenshots / "buy-credits-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_a_payment_cancelled_on_stripe_adds_nothing(
    shop: Browsing, fake_stripe: FakeStripe
) -> None:
    page, before = _sign_in(shop)
    _buy(page, "10000")
    _on_checkout(page, fake_stripe)
    expect(page.locator("#amount")).to_have_text("10.00 USD")
    page.get_by_role("link", name="Cancel").click()
    purchase_id = _purchase_page(shop, "cancel")
    expect(page.locator("#purchase-state")).to_have_text(
        "Payment cancelled: nothing was charged and no credits were added."
    )
    expect(page.locator("#balance")).to_have_text(_grouped(str(before)))
    expect(page.locator("#purchase-status")).to_have_text("Not paid yet")
    assert _api(shop.base, page, f"{PURCHASES}/{purchase_id}")["status"] == "pending"
    assert _api(shop.base, page, "/api/credit/balance")["balance"] == str(before)
    assert _serious_violations(page) == []
    page.screenshot(path=str(shop.screenshots / "purchase-cancelled.png"), full_page=True)


def test_the_purchase_page_waits_for_the_payment_to_be_confirmed(
    shop: Browsing, fake_stripe: FakeStripe
) -> None:
    """Stripe's webhook may come after the buyer: the page reads the purchase again until it
    does. A payment that settles later (a bank debit) first completes unpaid."""
    page, before = _sign_in(shop)
    _buy(page, "5000")
    session_id = _on_checkout(page, fake_stripe)
    fake_stripe.pay(session_id, asynchronous=True)
    purchase_id = fake_stripe.session(session_id)["client_reference_id"]
    page.goto(f"{shop.base}/purchases/{purchase_id}?checkout=success")
    state = page.locator("#purchase-state")
    expect(state).to_have_text("Waiting for the payment to be confirmed\u2026")
    expect(page.locator("#balance")).to_have_text(_grouped(str(before)))
    assert _serious_violations(page) == []
    page.screenshot(path=str(shop.screenshots / "purchase-waiting.png"), full_page=True)
    with page.expect_response(f"**{PURCHASES}/{purchase_id}"):  # read again at least once
        pass
    fake_stripe.settle_async(session_id)
    expect(state).to_have_text("Payment received: 5,000 credits added.", timeout=30_000)
    expect(page.locator("#balance")).to_have_text(_grouped(str(before + 5000)))


def test_signed_out_the_purchase_page_asks_to_sign_in_first(shop: Browsing) -> None:
    page = shop.page
    page.goto(f"{shop.base}/purchases/999999?checkout=success")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#purchase")).to_be_hidden()
    page.get_by_role("button", name="Sign in as the demo user").click()
    # Not the demo user's (or nobody's): said, and nothing else shown of it.
    expect(page.locator("#purchase-error")).to_have_text("You have no such purchase.")
    shop.meant_refusals.append((404, f"{PURCHASES}/999999"))
    expect(page.locator("#purchase-credits")).to_have_text("\u2013")


def test_stripe_unreachable_is_said_and_nothing_is_bought(
    shop: Browsing, fake_stripe: FakeStripe
) -> None:
    page, _before = _sign_in(shop)
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    fake_stripe.failure = ERROR
    with page.expect_response(f"**{PURCHASES}") as answer:
        _buy(page, "5000")
    assert answer.value.status == 503
    shop.meant_refusals.append((503, PURCHASES))
    outcome = page.locator("#buy-form .outcome")
    expect(outcome).to_have_text(
        "The payment service cannot be reached just now; nothing was charged. "
        "Try again in a moment."
    )
    expect(outcome).to_have_class("outcome refused")
    expect(page).to_have_url(f"{shop.base}/")
    # Once Stripe answers again, the same click buys.
    fake_stripe.failure = None
    page.get_by_role("button", name="Buy", exact=True).click()
    _on_checkout(page, fake_stripe)
    status, _headers, listed = call("GET", f"{shop.base}{PURCHASES}", token)
    assert status == 200
    assert [item["status"] for item in json.loads(listed)["items"]] == ["pending"]


def test_where_stripe_is_not_configured_buying_is_said_to_be_unavailable(
    app: Flask, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    with browse(app, screenshots, STRIPE_SECRET_KEY="", STRIPE_WEBHOOK_SECRET="") as shop:
        page, before = _sign_in(shop)
        with page.expect_response(f"**{PURCHASES}") as answer:
            _buy(page, "5000")
        assert answer.value.status == 503
        assert answer.value.json()["error"]["code"] == "purchases_unavailable"
        shop.meant_refusals.append((503, PURCHASES))
        outcome = page.locator("#buy-form .outcome")
        expect(outcome).to_have_text("Buying credits is not available here.")
        expect(outcome).to_have_class("outcome refused")
        expect(page).to_have_url(f"{shop.base}/")
        assert _api(shop.base, page, PURCHASES)["items"] == []
        assert _api(shop.base, page, "/api/credit/balance")["balance"] == str(before)
        assert _serious_violations(page) == []
