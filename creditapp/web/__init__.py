"""The dashboard and the admin console: pages for people, over the same JSON API every client
uses.

The pages carry no rule of their own: the browser signs in, reads and spends through
`/api/...` with the access token, kept in `sessionStorage` (never a cookie). Scripts and styles
come from this blueprint's static folder only, so the Content-Security-Policy allows nothing
else (no inline script or style, no CDN): the pages work offline. The one exception is Google's
sign-in script and frame, allowed only when Google sign-in is configured (GOOGLE_CLIENT_ID).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, render_template

from creditapp.billing.models import COMPENSATION_STATUSES
from creditapp.metering.providers import PROVIDER_NAMES

blp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/web/static",
)

# Google Identity Services' own list of what its button needs.
GOOGLE_SIGN_IN = {
    "script-src": "https://accounts.google.com/gsi/client",
    "frame-src": "https://accounts.google.com/gsi/",
    "connect-src": "https://accounts.google.com/gsi/",
    "style-src": "https://accounts.google.com/gsi/style",
}


def content_security_policy(*, google_sign_in: bool) -> str:
    sources = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "frame-src": "'none'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
    }
    if google_sign_in:
        for directive, source in GOOGLE_SIGN_IN.items():
            sources[directive] = (
                source if sources[directive] == "'none'" else f"{sources[directive]} {source}"
            )
    return "; ".join(f"{directive} {source}" for directive, source in sources.items())


def _page(template: str, *, script: str, demo_role: str, **context: Any) -> Response:
    client_ids = current_app.config["GOOGLE_CLIENT_IDS"]
    page = render_template(
        template,
        script=script,
        demo_mode=current_app.config["DEMO_MODE"],
        demo_role=demo_role,
        # The first client id is the web client's (the others are the mobile apps').
        google_client_id=client_ids[0] if client_ids else None,
        **context,
    )
    response = Response(page, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = content_security_policy(
        google_sign_in=bool(client_ids)
    )
    return response


@blp.route("/", methods=["GET"])
def dashboard() -> Response:
    """Sign-in, then the user's credits, buying more, usage, transactions with their receipts,
    chat, API keys, teams, and alerts and webhooks."""
    return _page(
        "dashboard.html",
        script="dashboard.js",
        demo_role="user",
        purchase_min_credits=current_app.config["PURCHASE_MIN_CREDITS"],
        purchase_max_credits=current_app.config["PURCHASE_MAX_CREDITS"],
    )


@blp.route("/purchases/<purchase_id>", methods=["GET"])
def purchase(purchase_id: str) -> Response:
    """Where Stripe sends the buyer back (`?checkout=success` or `?checkout=cancel`): the
    purchase's status as it changes, and the balance. The page reads the id from its own
    address, as it reads everything else from the API."""
    return _page("purchase.html", script="purchase.js", demo_role="user")


@blp.route("/admin", methods=["GET"])
def admin_console() -> Response:
    """Sign-in, then (for admins) users, their credit and transactions (refunds of their
    messages among them), compensations, reconciliation, prices, tiers and the audit log."""
    return _page(
        "admin.html",
        script="admin.js",
        demo_role="admin",
        providers=PROVIDER_NAMES,
        compensation_statuses=COMPENSATION_STATUSES,
    )
