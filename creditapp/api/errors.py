"""The one place where every failure becomes the contract's error shape."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import structlog
from flask import Flask, Response, g, jsonify
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


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def from_error(error: CreditAppError) -> Response:
    return error_response(error.status, error.code, error.message, error.details)


def _field_details(messages: Any) -> dict[str, Any]:
    """webargs nests messages by location ({"json": {"amount": [...]}}); clients want fields."""
    details: dict[str, Any] = {}
    for location, fields in (messages or {}).items():
        if isinstance(fields, dict):
            details.update(fields)
        else:
            details[location] = fields
    return details


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    if status in (400, 422) and "messages" in data:
        messages = data["messages"]
        if messages == {"json": ["Invalid JSON body."]}:
            return from_error(MalformedJson())
        return from_error(ValidationFailed(details=_field_details(messages)))
    if status == 429:
        security_event("rate_limited", limit=str(error.description))
        response = error_response(
            429, RateLimited.code, f"Rate limit exceeded: {error.description}"
        )
        if error.response is not None and error.response.headers.get("Retry-After"):
            response.headers["Retry-After"] = error.response.headers["Retry-After"]
        return response
    code = _CODES_BY_STATUS.get(status, "error" if status < 500 else "internal_error")
    message = PayloadTooLarge.message if status == 413 else (error.description or error.name)
    response = error_response(status, code, message)
    if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


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
    app.register_error_handler(CreditAppError, from_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
