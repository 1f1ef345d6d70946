"""`/api/docs` in a real browser (Debian's Chromium through Playwright): Swagger UI renders the
service's own OpenAPI document, and every request the page makes is to the service itself and
succeeds, with no Content-Security-Policy violation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import sync_playwright

from tests.integration.live_server import live_server

pytestmark = pytest.mark.real_clock
CHROMIUM = "/usr/bin/chromium"


def test_the_docs_page_renders_offline_from_the_services_own_assets(
    app: Flask, tmp_path: Path
) -> None:
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}) as base:
        requested: list[str] = []
        failed: list[str] = []
        console_errors: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on(
                "console",
                lambda message: (
                    console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            response = page.goto(f"{base}/api/docs")
            assert response is not None and response.status == 200
            title = page.locator(".swagger-ui .info .title")
            title.wait_for(timeout=20_000)
            assert "creditapp" in title.inner_text()
            assert page.locator(".opblock-tag").count() >= 5  # the blueprints' sections
            page.screenshot(path=str(os.environ.get("DOCS_SCREENSHOT") or tmp_path / "docs.png"))
            browser.close()
    assert failed == []
    assert console_errors == []
    assert requested and all(url.startswith(base) for url in requested), requested
