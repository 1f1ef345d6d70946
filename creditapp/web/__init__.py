"""The dashboard: pages for people, over the same JSON API every client uses.

The pages carry no rule of their own: the browser signs in, reads and spends through
`/api/...` with the access token, kept in `sessionStorage` (never a cookie). Scripts and styles
come from this blueprint's static folder only, so the Content-Security-Policy allows nothing
else (no inline script or style, no CDN): the pages work offline.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

blp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/web/static",
)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@blp.route("/", methods=["GET"])
def dashboard() -> Response:
    """Sign-in, then the user's credits, usage, transactions with their receipts, and chat."""
    page = render_template("dashboard.html", demo_mode=current_app.config["DEMO_MODE"])
    response = Response(page, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CSP
    return response
