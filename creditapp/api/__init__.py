"""The HTTP layer: thin blueprints that parse, call a domain service and dump."""

from __future__ import annotations

from flask import Flask

from creditapp.api import admin, auth, chat, credit, docs, jobs, me, ops, pricing
from creditapp.api.errors import register_error_handlers
from creditapp.api.identity import register_token_errors
from creditapp.api.limits import limiter
from creditapp.api.request_context import register_request_context
from creditapp.extensions import api, jwt


def register_api(app: Flask) -> None:
    """Bind the HTTP layer to the app: request context, rate limits, blueprints, errors."""
    # Request ids first, so that even a rate-limited response carries one.
    register_request_context(app)
    limiter.init_app(app)
    register_token_errors(jwt)
    for blueprint in (auth.blp, me.blp, credit.blp, chat.blp, admin.blp, pricing.blp, jobs.blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(ops.blp)
    app.register_blueprint(docs.blp)
    register_error_handlers(app)
