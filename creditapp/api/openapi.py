"""The OpenAPI document (`/api/openapi.json`), made to tell the truth: every error response has
the contract's error body, every operation lists exactly the statuses it can answer, and the
headers that matter are described.

A view says what it is through the decorators it already wears, and each of them records it
with `declare`: `authenticated` (a bearer token: 401, and 403 for admin operations),
`idempotent` (the Idempotency-Key header: 400, 409), `limits.exempt` (no 429), `answers` for
the statuses of the view's own domain rules (402, 502, ...), and the blueprint itself for path
ids (400, 404). When the document is built, `document_operation` turns the record into
responses, security and parameters, and adds what operations share: 414 and 431 (the HTTP
server's limits on the request line and headers) everywhere, 413 and 415 where a body may be
sent, 429 where rate limits count, 503 where the database is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from copy import deepcopy
from http import HTTPStatus
from typing import Any, TypeVar

import flask_smorest
from flask import Flask
from marshmallow import Schema, fields

F = TypeVar("F", bound=Callable[..., Any])

_FACTS = "creditapp"
# flask-smorest's name for the blueprint that serves the document.
DOCUMENT_BLUEPRINT = "api-docs"
_BODY_METHODS = ("post", "put", "patch")

# Every error status the service answers, with the error codes behind it.
ERROR_STATUSES = {
    400: "The request is invalid; `details` names each bad field or header "
    "(`validation_error`, `malformed_json`, `model_not_priced`, `amount_not_positive`, ...).",
    401: "No valid token: missing, expired, forged, or not the kind this operation takes "
    "(`unauthorized`, `invalid_id_token`), or its session was revoked (`token_revoked`).",
    402: "Not enough credits for the worst case of this request (`insufficient_credits`; "
    "`details` has `required` and `available`), or, paying from a team, past the caller's "
    "member cap for the period (`member_cap_reached`). Nothing was charged.",
    403: "Not allowed: an admin's operation, a team's management by a plain member, or a "
    "model the caller's tier does not include (`forbidden`, `team_managers_only`, "
    "`model_not_allowed`).",
    404: "No such object, or it is another user's (`not_found`).",
    409: "Conflicts with an earlier request or with the current state "
    "(`idempotency_key_reused`, `request_in_progress`, `balance_would_go_negative`, "
    "`already_refunded`, `conflict`).",
    413: "The body is larger than 64 KiB (`payload_too_large`).",
    414: "The request line (path and query) is longer than 8 KiB (`uri_too_long`): refused "
    "by the HTTP server before the service reads the request.",
    415: "The body is not JSON (`unsupported_media_type`).",
    429: "Rate limited (`rate_limited`); `Retry-After` says when to come back.",
    431: "A request header is too large, or there are too many (`headers_too_large`): "
    "refused by the HTTP server before the service reads the request.",
    502: "The AI provider failed (`provider_error`): nothing was charged, or what it billed "
    "was refunded (`details.credits_charged`, `details.compensation_id`).",
    503: "A dependency the request needs is down (`service_unavailable`): the database, the "
    "job broker, or (readiness) Redis.",
}

# The gateway's (`/v1`) error statuses: OpenAI's error body, with these codes behind them.
GATEWAY_ERROR_STATUSES = {
    400: "The request is invalid (`type`: `invalid_request_error`; `param` names the first bad "
    "parameter, `message` every one); an unknown parameter is one.",
    401: "No live API key (`invalid_api_key`): missing, unknown, revoked, expired, or an access "
    "token (keys open /v1, tokens the rest).",
    402: "Not charged, refused before any provider call: not enough credits "
    "(`insufficient_credits`), the key's limit for the period (`key_limit_reached`), the "
    "owner's member cap of a team key's team (`member_cap_reached`), or a hold above "
    "`X-Max-Credits` (`max_credits_exceeded`).",
    403: "The model is not in the caller's tier or the key's `allowed_models` "
    "(`model_not_allowed`).",
    404: "No such model (`model_not_found`: not `provider/model` of the price book) or "
    "generation (`not_found`).",
    409: "Conflicts with an earlier request of the same Idempotency-Key "
    "(`idempotency_key_reused`, `request_in_progress`).",
    413: ERROR_STATUSES[413],
    414: ERROR_STATUSES[414],
    415: ERROR_STATUSES[415],
    429: "Rate limited (`rate_limited`, the tier's limits per user, all their keys together); "
    "`Retry-After` says when to come back.",
    431: ERROR_STATUSES[431],
    502: "The AI provider failed (`provider_error`): nothing was charged, or what it billed "
    "was refunded.",
    503: "A dependency the request needs is down (`service_unavailable`).",
}
# The gateway's error responses are named after the status with this prefix.
GATEWAY_ERROR_PREFIX = "OPENAI_"

HEADERS = {
    "X-Request-ID": {
        "description": "The request's id: the client's `X-Request-ID` when it sent a sane one, "
        "else a new one. The same id is in every log line and audit record the request caused.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response of an earlier request with the "
        "same Idempotency-Key, replayed byte for byte: nothing ran again.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the tightest window that applies.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "When that window resets (Unix time, seconds).",
        "schema": {"type": "integer", "minimum": 0},
    },
}
_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

# Schemes of a sender's signature (a webhook): a bad one is the request's fault, a 400.
SIGNATURES = frozenset({"stripe_signature"})

SECURITY_SCHEMES = {
    "access_token": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from sign-in or refresh (valid for JWT_ACCESS_MINUTES).",
    },
    "refresh_token": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A refresh token from sign-in or the previous refresh; each is spent "
        "by its use, and presenting a spent one again revokes its session.",
    },
    "api_key": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`ca-...`, from POST /api/keys): the gateway's (/v1) only.",
    },
    "stripe_signature": {
        "type": "apiKey",
        "in": "header",
        "name": "Stripe-Signature",
        "description": "Stripe's signature over the raw body with STRIPE_WEBHOOK_SECRET, at "
        "most 5 minutes old; a missing or bad one is a 400 (`invalid_signature`).",
    },
    "metrics_token": {
        "type": "http",
        "scheme": "bearer",
        "description": "The METRICS_TOKEN, when the service is configured with one.",
    },
}

DESCRIPTION = """Prepaid credits for an AI chat product: 1 credit = 0.001 USD.

- **Amounts** are decimal strings in credits with at most 6 decimals (`"5750"`, `"0.015"`);
  requests also take JSON integers. Timestamps are ISO 8601 UTC with `Z`; ids are opaque strings.
- **Errors** always have the body `{"error": {"code", "message", "request_id", "details"}}`.
- **Idempotency-Key** (1-255 printable ASCII) makes a mutation run at most once per user and
  key within 24 hours; the message endpoint requires it.
- **Lists** take `limit` (1-200) and an opaque `cursor`, newest first, and answer
  `{"items": [...], "next_cursor": ... | null}`.
- Sign in for tokens, then **Authorize** with the access token.
"""


class ErrorBodySchema(Schema):
    code = fields.String(
        required=True, metadata={"description": "What went wrong, for programs to branch on."}
    )
    message = fields.String(required=True, metadata={"description": "For people."})
    request_id = fields.String(
        required=True, metadata={"description": "The request's `X-Request-ID`."}
    )
    details = fields.Dict(
        required=True,
        metadata={"description": "Per field, or the numbers behind the error; may be empty."},
    )


class ErrorSchema(Schema):
    """The body of every error response."""

    error = fields.Nested(ErrorBodySchema, required=True)


class OpenAIErrorBodySchema(Schema):
    message = fields.String(required=True, metadata={"description": "For people."})
    type = fields.String(
        required=True,
        metadata={"description": "OpenAI's error type (`invalid_request_error`, ...)."},
    )
    param = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The bad parameter, when one is to blame."},
    )
    code = fields.String(
        required=True, metadata={"description": "What went wrong, for programs to branch on."}
    )
    request_id = fields.String(
        required=True, metadata={"description": "The request's `X-Request-ID`."}
    )


class OpenAIErrorSchema(Schema):
    """The body of every error response of the gateway (`/v1`): OpenAI's, which its SDKs
    read."""

    error = fields.Nested(OpenAIErrorBodySchema, required=True)


class Api(flask_smorest.Api):
    """flask-smorest's Api with the contract's error body and no catch-all `default` response:
    each operation lists its own statuses."""

    ERROR_SCHEMA = ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self) -> None:
        """The components operations refer to: headers, security schemes, error responses."""
        for name, header in HEADERS.items():
            self.spec.components.header(name, header, lazy=True)
        for name, scheme in SECURITY_SCHEMES.items():
            self.spec.components.security_scheme(name, scheme)
        shapes = (
            ("", ERROR_STATUSES, self.ERROR_SCHEMA),
            (GATEWAY_ERROR_PREFIX, GATEWAY_ERROR_STATUSES, OpenAIErrorSchema),
        )
        for prefix, statuses, schema in shapes:
            for status, description in statuses.items():
                headers = {"X-Request-ID": "X-Request-ID"}
                if status == HTTPStatus.TOO_MANY_REQUESTS:
                    headers["Retry-After"] = "Retry-After"
                response = {
                    "description": description,
                    "headers": headers,
                    "content": {"application/json": {"schema": schema}},
                }
                name = f"{prefix}{HTTPStatus(status).name}"
                self.spec.components.response(name, response, lazy=True)


api = Api(spec_kwargs={"info": {"description": DESCRIPTION}})


def declare(view: F, **facts: Any) -> F:
    """Record facts about a view for its OpenAPI operation: `security` (a scheme's name),
    `admin`, `idempotency` (`required` or `optional`), `rate_limited` and `uses_database`
    (both true unless said otherwise), `errors` (statuses; they add up), and `event_stream`
    (the success may also stream: the stream's description)."""
    apidoc = deepcopy(getattr(view, "_apidoc", {}))
    recorded = apidoc.setdefault(_FACTS, {})
    for name, value in facts.items():
        recorded[name] = sorted({*recorded.get(name, ()), *value}) if name == "errors" else value
    view._apidoc = apidoc  # type: ignore[attr-defined]
    return view


def declares(**facts: Any) -> Callable[[F], F]:
    """`declare` as a decorator, for a view's own facts (`security="refresh_token"`, ...)."""
    return lambda view: declare(view, **facts)


def answers(*statuses: int) -> Callable[[F], F]:
    """Document the error statuses a view's own domain rules answer."""
    return declares(errors=statuses)


def _idempotency_key(*, required: bool) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": required,
        "description": "Runs this request at most once per user and key (24 h); a retry with "
        "the same key and body gets the stored response with `Idempotent-Replayed: true`.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    }


def _statuses(facts: dict[str, Any], method: str) -> Iterable[int]:
    statuses = {414, 431, *facts.get("errors", ())}
    if facts.get("security") and facts["security"] not in SIGNATURES:
        statuses.add(401)
    if facts.get("admin"):
        statuses.add(403)
    if facts.get("idempotency"):
        statuses |= {400, 409}
    if method in _BODY_METHODS:
        statuses |= {413, 415}
    if facts.get("rate_limited", True):
        statuses.add(429)
    if facts.get("uses_database", True):
        statuses.add(503)
    return sorted(statuses)


def document_operation(
    doc: dict[str, Any], doc_info: dict[str, Any], *, method: str, **_context: Any
) -> dict[str, Any]:
    """A flask-smorest doc callback: the recorded facts become the operation's security,
    parameters, error responses and response headers."""
    facts = doc_info.get(_FACTS, {})
    if facts.get("security"):
        scheme = facts["security"]
        # The metrics token is only needed when the service is configured with one.
        doc["security"] = [{scheme: []}, {}] if scheme == "metrics_token" else [{scheme: []}]
    if facts.get("idempotency"):
        required = facts["idempotency"] == "required"
        doc.setdefault("parameters", []).append(_idempotency_key(required=required))
    responses = doc.setdefault("responses", {})
    success_headers = ["X-Request-ID"]
    if facts.get("idempotency"):
        success_headers.append("Idempotent-Replayed")
    if facts.get("rate_limited", True):
        success_headers.extend(_RATE_LIMIT_HEADERS)
    for response in responses.values():
        if isinstance(response, dict):  # the view's own responses; errors are references
            response.setdefault("headers", {}).update({name: name for name in success_headers})
    if facts.get("event_stream"):
        # The same success answered whole (JSON) or streamed, as the request asks.
        success = responses[next(status for status in responses if int(status) < 300)]
        success.setdefault("content", {})["text/event-stream"] = {
            "schema": {"type": "string", "description": facts["event_stream"]}
        }
    documented = {int(status) for status in responses}
    # An API key's operations are the gateway's: OpenAI's error body, where flask-smorest
    # named one already (a refused argument's 400) too.
    prefix = GATEWAY_ERROR_PREFIX if facts.get("security") == "api_key" else ""
    for status, response in responses.items():
        if isinstance(response, str) and prefix:
            responses[status] = f"{prefix}{response}"
    for status in _statuses(facts, method):
        if status not in documented:
            responses[status] = f"{prefix}{HTTPStatus(status).name}"
    return doc


def document_openapi_json(api: Api, app: Flask) -> None:
    """The document describes itself too (flask-smorest serves it from a blueprint of its own,
    which no rate limit counts: the docs page reads it)."""
    served = {
        "tags": ["docs"],
        "summary": "This OpenAPI document",
        "responses": {
            200: {
                "description": "OpenAPI 3",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }
    facts = {_FACTS: {"rate_limited": False, "uses_database": False}}
    api.spec.path(
        rule=next(app.url_map.iter_rules(f"{DOCUMENT_BLUEPRINT}.openapi_json")),
        operations={"get": document_operation(served, facts, method="get")},
    )
