"""The one place where every failure is rendered: a failure becomes a `Failure` (status, code,
message, details, headers) here, and the renderer chosen for the request gives it its shape.

Renderers are chosen per blueprint, and per URL prefix for a request that matches no route (an
unknown URL or a wrong method under the prefix); anything else gets the contract's shape
(`contract_shape`). A door with its own shape (OpenAI's under `/v1`) registers it with
`render_errors`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from creditapp.api.security import security_event
from creditapp.errors import (
    CreditAppError,
    DependencyUnavailable,
    MalformedJson,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
    ValidationFailed,
)

log = structlog.get_logger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: PayloadTooLarge.code,
    415: UnsupportedMediaType.code,
    429: RateLimited.code,
}


@dataclass(frozen=True)
class Failure:
    """A failure before it has a shape: what every renderer is given. `code` is the
    contract's error code (`validation_error`, `rate_limited`, ...); `headers` go on the
    response whatever its shape (`Retry-After`, `Allow`)."""

    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, error: CreditAppError) -> Failure:
        return cls(error.status, error.code, error.message, error.details)


Renderer = Callable[[Failure], Response]


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's error object."""
    return {
        "error": {
            "code": code,
            "message": message,
            "request_id": g.get("request_id"),
            "details": details or {},
        }
    }


def contract_shape(failure: Failure) -> Response:
    """The contract's shape: `{"error": {"code", "message", "request_id", "details"}}`."""
    response = jsonify(error_body(failure.code, failure.message, failure.details))
    response.status_code = failure.status
    return response


class Renderers:
    """Which renderer gives a request's failures their shape."""

    def __init__(self, default: Renderer = contract_shape):
        self.default = default
        self._by_blueprint: dict[str, Renderer] = {}
        self._by_prefix: dict[str, Renderer] = {}

    def add(self, renderer: Renderer, *, blueprint: str, url_prefix: str | None = None) -> None:
        self._by_blueprint[blueprint] = renderer
        if url_prefix is not None:
            self._by_prefix[url_prefix.rstrip("/")] = renderer

    def choose(self, blueprints: list[str], path: str) -> Renderer:
        """The renderer of the innermost blueprint that has one; for a request outside every
        such blueprint (no route matched), that of the longest registered prefix of `path`."""
        for name in blueprints:
            if name in self._by_blueprint:
                return self._by_blueprint[name]
        under = [
            prefix for prefix in self._by_prefix if path == prefix or path.startswith(f"{prefix}/")
        ]
        return self._by_prefix[max(under, key=len)] if under else self.default


_RENDERERS = "creditapp.error_renderers"


def _renderers(app: Flask) -> Renderers:
    renderers: Renderers = app.extensions.setdefault(_RENDERERS, Renderers())
    return renderers


def render_errors(
    app: Flask, renderer: Renderer, *, blueprint: str, url_prefix: str | None = None
) -> None:
    """Render the failures of `blueprint`'s requests with `renderer`, and those of requests
    under `url_prefix` that match no route (an unknown URL, a method it does not take)."""
    _renderers(app).add(renderer, blueprint=blueprint, url_prefix=url_prefix)


def render(failure: Failure) -> Response:
    """`failure` in the shape chosen for the current request (the contract's outside one)."""
    if has_request_context():
        renderer = _renderers(current_app).choose(request.blueprints, request.path)
    else:
        renderer = contract_shape
    response = renderer(failure)
    response.headers.update(failure.headers)
    return response


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    return render(Failure(status, code, message, details or {}))


def from_error(error: CreditAppError) -> Response:
    """A broken rule, in the shape chosen for the current request."""
    return render(Failure.of(error))


def _field_details(messages: Any) -> dict[str, Any]:
    """webargs nests messages by location ({"json": {"amount": [...]}}); clients want fields."""
    details: dict[str, Any] = {}
    for location, fields in (messages or {}).items():
        if isinstance(fields, dict):
            details.update(fields)
        else:
            details[location] = fields
    return details


def _http_failure(error: HTTPException) -> Failure:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    if status in (400, 422) and "messages" in data:
        messages = data["messages"]
        if messages == {"json": ["Invalid JSON body."]}:
            return Failure.of(MalformedJson())
        return Failure.of(ValidationFailed(details=_field_details(messages)))
    if status == 429:
        security_event("rate_limited", limit=str(error.description))
        answered = error.response
        retry_after = None if answered is None else answered.headers.get("Retry-After")
        return Failure(
            429,
            RateLimited.code,
            f"Rate limit exceeded: {error.description}",
            headers={"Retry-After": retry_after} if retry_after else {},
        )
    code = _CODES_BY_STATUS.get(status, "error" if status < 500 else "internal_error")
    message = PayloadTooLarge.message if status == 413 else (error.description or error.name)
    allowed = getattr(error, "valid_methods", None) if status == 405 else None
    return Failure(status, code, message, headers={"Allow": ", ".join(allowed)} if allowed else {})


def _http_error(error: HTTPException) -> Response:
    return render(_http_failure(error))


# The database could not serve the request (unreachable, connection lost, timed out, every
# pooled connection busy past the pool's timeout): the ledger's own SQL raises the drivers'
# errors directly, the rest comes through SQLAlchemy.
DATABASE_DOWN = (
    OperationalError,
    PoolTimeout,
    psycopg.OperationalError,
    sqlite3.OperationalError,
)


def _unexpected(error: Exception) -> Response:
    if isinstance(error, DATABASE_DOWN):
        log.error("database_unavailable", error=str(error))
        return from_error(DependencyUnavailable())
    log.exception("unhandled_error")
    return error_response(500, "internal_error", "An unexpected error occurred.")


def register_error_handlers(app: Flask) -> None:
    """Every failure, whatever raised it, through `render`; the contract's shape by default."""
    _renderers(app)
    app.register_error_handler(CreditAppError, from_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
