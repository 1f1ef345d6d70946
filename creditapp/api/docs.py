"""`/api/docs`: interactive API docs (Swagger UI) over `/api/openapi.json`, working offline.

Swagger UI's files come from the `swagger-ui-bundle` package (Swagger UI 4.15.5, Apache-2.0,
pinned in requirements.txt) and are served by the service itself; no CDN is involved. The page
runs no inline script, so its Content-Security-Policy allows scripts from the service only.
"""

from __future__ import annotations

import flask
import swagger_ui_bundle
from flask import Response, send_from_directory

from creditapp.api import limits
from creditapp.api.openapi import declares
from creditapp.api.parsing import Blueprint

# The page is an operation of the API document; the files it loads are not. A page's link may
# carry a query of its own (a campaign's, a browser's): not refused as an operation's would be.
blp = Blueprint(
    "docs",
    __name__,
    url_prefix="/api/docs",
    description="API documentation",
    query_checked=False,
)
assets = flask.Blueprint("docs_assets", __name__, url_prefix="/api/docs")

# Swagger UI sets inline styles and draws icons as data: images; scripts stay 'self' only.
_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>creditapp API</title>
  <link rel="stylesheet" href="/api/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/api/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/api/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script src="/api/docs/start.js"></script>
</body>
</html>
"""
_START = """window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout",
});
"""


def _with_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    return response


@blp.route("", methods=["GET"])
@limits.exempt
@declares(uses_database=False)
@blp.response(200, {"type": "string"}, content_type="text/html", description="Swagger UI")
def page() -> Response:
    """Interactive API docs (Swagger UI over this document), served with no internet access."""
    return _with_policy(Response(_PAGE, content_type="text/html; charset=utf-8"))


@assets.route("/start.js", methods=["GET"])
@limits.limiter.exempt
def start() -> Response:
    return _with_policy(Response(_START, content_type="text/javascript; charset=utf-8"))


@assets.route("/assets/<path:name>", methods=["GET"])
@limits.limiter.exempt
def asset(name: str) -> Response:
    return _with_policy(send_from_directory(swagger_ui_bundle.swagger_ui_path, name))
