"""The HTTP layer: thin blueprints that parse, call a domain service and dump."""

from __future__ import annotations

from typing import cast

from flask import Blueprint, Flask

from creditapp.api import (
    admin,
    auth,
    chat,
    compensations,
    credit,
    docs,
    gateway,
    keys,
    me,
    openapi,
    ops,
    pricing,
    purchases,
    reconciliation,
    signals,
    teams,
    tiers,
)
from creditapp.api.errors import register_error_handlers
from creditapp.api.identity import register_identity, register_token_errors
from creditapp.api.limits import limiter
from creditapp.api.request_context import register_request_context
from creditapp.extensions import jwt


def register_api(app: Flask) -> None:
    """Bind the HTTP layer to the app: request context, principal, rate limits, blueprints,
    errors."""
    # Request ids first, so that even a rate-limited response carries one.
    register_request_context(app)
    # Each request starts with no principal, before the rate limiter looks for one.
    register_identity(app)
    limiter.init_app(app)
    register_token_errors(jwt)
    openapi.api.init_app(app)
    limiter.exempt(cast(Blueprint, app.blueprints[openapi.DOCUMENT_BLUEPRINT]))
    openapi.document_openapi_json(openapi.api, app)
    blueprints = (
        auth,
        me,
        credit,
        chat,
        keys,
        gateway,
        admin,
        pricing,
        purchases,
        teams,
        signals,
        tiers,
        compensations,
        reconciliation,
        ops,
        docs,
    )
    for module in blueprints:
        openapi.api.register_blueprint(module.blp)
    app.register_blueprint(docs.assets)
    register_error_handlers(app)
    gateway.register_gateway_errors(app)
