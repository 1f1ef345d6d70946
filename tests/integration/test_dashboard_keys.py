"""The dashboard's API keys in a real browser (Debian's Chromium through Playwright, against a
real gunicorn in demo mode, as in test_dashboard): a key is made with a limit and shown once
(copied to the clipboard, gone after a reload, its prefix staying in the list); the real
`openai` SDK spends with it, and the list then shows what it spent and when it was used; revoked
from its row, the key is refused (401). A request that is not valid names its field beside it.
axe finds nothing serious in each state; screenshots go to DASHBOARD_SCREENSHOTS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from flask import Flask
from playwright.sync_api import Dialog, Locator, Page, expect

from tests.integration.test_dashboard import Browsing, _api, _serious_violations, browse

pytestmark = pytest.mark.real_clock
# The model of the character `demo seed` makes (Ada), priced by the same seed.
DEMO_MODEL = "demo/demo-chat"


@pytest.fixture
def browsing(app: Flask, tmp_path: Path) -> Iterator[Browsing]:
    screenshots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    with browse(app, screenshots) as browsing:
        yield browsing


def _sign_in(browsing: Browsing) -> Page:
    page = browsing.page
    page.goto(f"{browsing.base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")  # the placeholder dash
    return page


def _row(page: Page, name: str) -> Locator:
    named = page.get_by_role("cell", name=name, exact=True)
    return page.locator("#keys tbody tr").filter(has=named)


def _cells(row: Locator) -> dict[str, str]:
    """A key's row by its column headings (but its actions)."""
    headings = row.page.locator("#keys thead th").all_inner_texts()
    return dict(zip(headings[:-1], row.locator("td").all_inner_texts()[:-1], strict=True))


def _gateway(browsing: Browsing, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{browsing.base}/v1", api_key=key, max_retries=0, timeout=30)


def _hello(client: openai.OpenAI) -> tuple[Decimal, dict[str, str]]:
    """One call through the SDK: the charge its `usage` says, and the answer's headers."""
    raw = client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL, messages=[{"role": "user", "content": "Hello from the SDK!"}]
    )
    completion = raw.parse()
    assert (completion.choices[0].message.content or "").endswith("You said: Hello from the SDK!")
    assert completion.usage is not None and completion.usage.model_extra is not None
    return Decimal(completion.usage.model_extra["credits"]), dict(raw.headers)


def test_a_key_is_shown_once_spends_through_the_sdk_and_is_revoked(browsing: Browsing) -> None:
    base, screenshots = browsing.base, browsing.screenshots
    page = _sign_in(browsing)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    section = page.locator("#keys-section")
    expect(page.locator("#keys tbody tr")).to_have_text(["No keys yet."])
    example = page.locator("#key-snippet")
    expect(example).to_contain_text(f"export OPENAI_BASE_URL={base}/v1\n")
    expect(example).to_contain_text("export OPENAI_API_KEY=ca-\u2026\n")
    expect(example).to_contain_text(f'model="{DEMO_MODEL}"')
    assert _serious_violations(page) == []

    # A model not named as provider/model: said beside its field, and no key is made.
    page.get_by_label("Name", exact=True).fill("scripts")
    page.get_by_label("Allowed models (optional)").fill("demo-chat")
    with page.expect_response("**/api/keys") as answer:
        page.get_by_role("button", name="Create key").click()
    assert answer.value.status == 400
    browsing.meant_refusals.append((400, "/api/keys"))
    models = page.locator("#key-models")
    expect(models).to_have_attribute("aria-invalid", "true")
    expect(models).to_have_attribute("aria-describedby", "key-models-error key-models-hint")
    expect(page.locator("#key-models-error")).to_have_attribute("role", "alert")
    expect(page.locator("#key-models-error")).not_to_have_text("")
    expect(page.locator("#key-form .outcome")).to_have_class("outcome refused")
    expect(page.locator("#new-key")).to_be_hidden()
    assert _serious_violations(page) == []
    section.screenshot(path=str(screenshots / "dashboard-keys-refused.png"))

    # Made with a limit of 10 credits a day (a call holds what the tier's 1024 tokens would
    # cost, 8.2 credits): shown once, with a Copy button and the warning.
    models.fill("")
    page.get_by_label("Limit in credits (optional)").fill("10")
    page.get_by_label("Limit per").select_option("day")
    page.get_by_role("button", name="Create key").click()
    box = page.locator("#new-key")
    expect(box).to_be_visible()
    expect(models).not_to_have_attribute("aria-invalid", "true")
    expect(models).to_have_attribute("aria-describedby", "key-models-hint")
    key = page.locator("#new-key-text").inner_text()
    assert key.startswith("ca-") and len(key) >= 43
    expect(box).to_contain_text("it will not be shown again")
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.locator("#copy-outcome")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    expect(example).to_contain_text(f"export OPENAI_API_KEY={key}\n")
    row = _row(page, "scripts")
    expect(row.locator("td.status")).to_have_text("active")
    assert _cells(row) == {
        "Name": "scripts",
        "Prefix": f"{key[:12]}\u2026",
        "Limit": "10 a day",
        "Spent this period": "0",
        "Models": "all the tier allows",
        "Last used": "never",
        "Expires": "never",
        "Status": "active",
    }
    assert _serious_violations(page) == []
    section.screenshot(path=str(screenshots / "dashboard-keys-new.png"))

    # After a reload the key is nowhere on the page; its row, by its prefix, stays.
    page.reload()
    expect(_row(page, "scripts").locator("td.prefix")).to_have_text(f"{key[:12]}\u2026")
    expect(box).to_be_hidden()
    assert key not in page.content()
    expect(example).to_contain_text("export OPENAI_API_KEY=ca-\u2026\n")

    # One call with the real SDK: its charge is what the list shows spent, and it was used.
    with _gateway(browsing, key) as client:
        charged, headers = _hello(client)
    assert charged > 0 and Decimal(headers["x-credits-charged"]) == charged
    page.reload()
    row = _row(page, "scripts")
    expect(row.locator("td.amount")).to_have_text(str(charged))
    expect(row.locator("td").nth(5)).not_to_have_text("never")
    (listed,) = _api(base, page, "/api/keys")["items"]
    assert listed["spent"] == str(charged) and listed["last_used_at"] is not None

    # Revoked from its row, after a confirm: the row says so and the key is refused.
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Revoke the key scripts").click()
    expect(row.locator("td.status")).to_have_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    assert questions == [
        f'Revoke the key "scripts" ({key[:12]}\u2026)? Every call with it is refused from now '
        "on; this cannot be undone."
    ]
    assert _api(base, page, "/api/keys")["items"][0]["revoked_at"] is not None
    with _gateway(browsing, key) as client, pytest.raises(openai.AuthenticationError) as refused:
        _hello(client)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"

    # A second key, for demo models only: shown in its box, above the first one revoked.
    page.get_by_label("Name", exact=True).fill("notebook")
    page.get_by_label("Allowed models (optional)").fill("demo/*")
    page.get_by_role("button", name="Create key").click()
    expect(box).to_be_visible()
    second = page.locator("#new-key-text").inner_text()
    assert second.startswith("ca-") and second != key
    expect(page.locator("#keys tbody tr")).to_have_count(2)
    assert _cells(_row(page, "notebook"))["Models"] == "demo/*"
    assert _serious_violations(page) == []
    section.screenshot(path=str(screenshots / "dashboard-keys.png"))
    page.set_viewport_size({"width": 375, "height": 800})
    section.screenshot(path=str(screenshots / "dashboard-keys-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.set_viewport_size({"width": 1100, "height": 900})

    # Hidden by its button, the key is gone from the page and from the example.
    page.get_by_role("button", name="I have copied it: hide it").click()
    expect(box).to_be_hidden()
    assert second not in page.content()
    expect(example).to_contain_text("export OPENAI_API_KEY=ca-\u2026\n")


def test_signing_out_takes_the_key_shown_off_the_page(browsing: Browsing) -> None:
    page = _sign_in(browsing)
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key")).to_be_visible()
    key = page.locator("#new-key-text").inner_text()
    assert key.startswith("ca-")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()
    assert key not in page.content()
    expect(page.locator("#new-key")).to_be_hidden()
    expect(page.locator("#keys tbody tr")).to_have_count(0)
