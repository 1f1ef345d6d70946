"""The dashboard in a real browser (Debian's Chromium through Playwright), against a real
gunicorn in demo mode: sign in with the demo button, see the API's balance, chat with a
streamed reply, watch the balance fall by the cost shown, and open that charge's receipt.
Every request stays on the service's origin; no console error; no serious or critical
accessibility violation (axe-core). Screenshots go to DASHBOARD_SCREENSHOTS (default: the
test's own folder)."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from playwright.sync_api import Page, expect, sync_playwright

from tests.integration.live_server import call, live_server

pytestmark = pytest.mark.real_clock
CHROMIUM = "/usr/bin/chromium"


def _api(base: str, page: Page, path: str, *, raw: bool = False) -> Any:
    """What the API answers the page's signed-in user: JSON, or the raw body."""
    token = page.evaluate("sessionStorage.getItem('creditapp.access_token')")
    status, _headers, body = call("GET", f"{base}{path}", token)
    assert status == 200, body
    return body if raw else json.loads(body)


def _serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{violation['id']}: {violation['help']}"
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def test_sign_in_chat_and_the_receipt_of_the_charge(app: Flask, tmp_path: Path) -> None:
    seeded = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert seeded.exit_code == 0, seeded.output
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "DEMO_MODE": "true"}
    with live_server(env, threads=4) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requested: list[str] = []
        console_errors: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on(
            "console",
            lambda message: (
                console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.goto(f"{base}/")
        assert _serious_violations(page) == []
        page.screenshot(path=str(screenshots / "sign-in.png"))

        page.get_by_role("button", name="Sign in as the demo user").click()
        expect(page.locator("#balance")).not_to_have_text("\u2013")  # the placeholder dash
        balance = _api(base, page, "/api/credit/balance")
        assert page.locator("#balance").inner_text() == balance["balance"]
        assert page.locator("#available").inner_text() == balance["available"]

        # Chat with Ada: the reply streams in, word by word.
        page.get_by_role("button", name="Start a conversation").click()
        page.get_by_label("Your message").fill("Hello Ada!")
        page.get_by_role("button", name="Send").click()
        reply = page.locator("#conversation .assistant p").first
        expect(reply).not_to_have_text("")
        first_seen = reply.inner_text()
        cost = page.locator("#conversation .assistant .cost")
        cost.wait_for()
        final = reply.inner_text()
        assert final == "Tell me more. You said: Hello Ada!"
        assert first_seen != final and final.startswith(first_seen)  # it came in pieces
        charged = cost.inner_text().removesuffix(" credits")
        after = Decimal(balance["balance"]) - Decimal(charged)
        assert page.locator("#balance").inner_text() == str(after)
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
        totals = page.locator("#receipt-totals")
        for field, name in (("charged", "charged"), ("exact-cost", "exact"), ("held", "held")):
            assert totals.locator(f"[data-field={field}]").inner_text() == receipt[name]
        lines = page.locator("#receipt-lines tbody tr")
        assert lines.count() == 4
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
        browser.close()
    assert console_errors == []
    assert requested and all(url.startswith(base) for url in requested), requested
