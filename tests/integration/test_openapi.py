"""The OpenAPI document tells the truth about every endpoint: it validates, lists every route,
gives every error response the contract's error body, and states the security, the
Idempotency-Key header and the response headers that matter. (Schemathesis then checks the live
service against it: `test_schemathesis.py`.)"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

# What the docs page loads: files, not operations of the API.
NOT_OPERATIONS = {
    "static",
    "docs_assets.start",
    "docs_assets.asset",
    "web.dashboard",
    "web.admin_console",
    "web.purchase",
    "web.static",
}
MUTATING = {"post", "put", "patch", "delete"}
GATEWAY = "/v1/"
ADMIN_PREFIX = "/api/admin/"
SIGN_IN = {"/api/auth/google", "/api/auth/demo"}
OPERATIONS_PATHS = {"/healthz", "/readyz", "/metrics", "/api/docs", "/api/openapi.json"}
# Webhooks: a signature instead of a token, the sender's event ids instead of Idempotency-Keys,
# no rate limit (the sender retries on its own schedule), and a bad signature is a 400.
WEBHOOKS = {"/api/webhooks/stripe"}


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if method != "parameters"
    ]


def _component(document: dict[str, Any], reference: str) -> dict[str, Any]:
    _, kind, name = reference.removeprefix("#/").rsplit("/", 2)
    found: dict[str, Any] = document["components"][kind][name]
    return found


def test_the_document_validates(document: dict[str, Any]) -> None:
    validate(document)  # openapi-spec-validator raises on any violation of OpenAPI 3.0


def test_every_route_is_an_operation_and_nothing_else_is(
    app: Flask, document: dict[str, Any]
) -> None:
    routes = {
        (method.lower(), rule.rule.replace("<", "{").replace(">", "}"))
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_OPERATIONS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(method, path) for method, path, _ in _operations(document)}
    assert documented == routes
    assert {"/healthz", "/readyz", "/metrics", "/api/docs", "/api/openapi.json"} <= {
        path for _, path in documented
    }


def test_every_error_response_has_the_contracts_body(document: dict[str, Any]) -> None:
    openai_body = _component(
        document, document["components"]["schemas"]["OpenAIError"]["properties"]["error"]["$ref"]
    )
    assert set(openai_body["required"]) == {"message", "type", "param", "code", "request_id"}
    error_schema = document["components"]["schemas"]["Error"]
    assert error_schema["required"] == ["error"]
    body = _component(document, error_schema["properties"]["error"]["$ref"])
    assert set(body["required"]) == {"code", "message", "request_id", "details"}
    for method, path, operation in _operations(document):
        assert "default" not in operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            referenced = _component(document, response["$ref"])
            schema = referenced["content"]["application/json"]["schema"]
            # The gateway's errors have OpenAI's body, which OpenAI's SDKs read.
            name = "OpenAIError" if path.startswith(GATEWAY) else "Error"
            assert schema == {"$ref": f"#/components/schemas/{name}"}, (method, path, status)


def test_every_response_documents_its_request_id(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            headers = _component(document, response["$ref"]) if "$ref" in response else response
            assert "X-Request-ID" in headers["headers"], (method, path, status)
    too_many = document["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]
    assert "Retry-After" in too_many
    assert document["components"]["headers"]["Retry-After"]["required"] is True


def test_security_and_the_statuses_it_brings(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["access_token"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["access_token"]["description"],
    }
    for method, path, operation in _operations(document):
        statuses = set(operation["responses"])
        if path.startswith(ADMIN_PREFIX):
            assert "403" in statuses, (method, path)
        if path in SIGN_IN | OPERATIONS_PATHS:
            continue
        scheme = "refresh_token" if path == "/api/auth/refresh" else "access_token"
        if path in WEBHOOKS:
            assert operation["security"] == [{"stripe_signature": []}], (method, path)
            assert "401" not in statuses and "400" in statuses, (method, path)
            continue
        if path.startswith(GATEWAY):
            scheme = "api_key"  # the gateway's door takes API keys, never access tokens
        assert operation["security"] == [{scheme: []}], (method, path)
        assert "401" in statuses, (method, path)
    assert document["paths"]["/metrics"]["get"]["security"] == [{"metrics_token": []}, {}]
    for path in SIGN_IN | OPERATIONS_PATHS - {"/metrics"}:
        for operation in document["paths"][path].values():
            assert "security" not in operation, path


# Where a retry without a key could spend or move credits twice: a message, a transfer.
KEY_REQUIRED = {"/api/conversations/{conversation_id}/messages", "/api/teams/{team_id}/transfers"}


def test_idempotency_key_where_the_contract_puts_it(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        keys = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
        if method not in MUTATING or path.startswith("/api/auth/") or path in WEBHOOKS:
            assert keys == [], (method, path)
            continue
        assert len(keys) == 1 and keys[0]["in"] == "header", (method, path)
        assert keys[0]["required"] is (path in KEY_REQUIRED), (method, path)
        assert {"400", "409"} <= set(operation["responses"]), (method, path)
        success = next(r for status, r in operation["responses"].items() if int(status) < 300)
        assert "Idempotent-Replayed" in success["headers"], (method, path)


def test_statuses_every_operation_shares(document: dict[str, Any]) -> None:
    no_database = {"/healthz", "/api/docs", "/api/openapi.json"}
    for method, path, operation in _operations(document):
        statuses = set(operation["responses"])
        assert {"414", "431"} <= statuses, (method, path)  # the HTTP server's limits
        assert ("429" in statuses) == (path not in OPERATIONS_PATHS | WEBHOOKS), (method, path)
        assert ("503" in statuses) == (path not in no_database), (method, path)
        takes_body = method in MUTATING - {"delete"}
        assert ({"413", "415"} <= statuses) == takes_body, (method, path)
        if "{" in path:
            assert {"400", "404"} <= statuses, (method, path)


def test_the_message_endpoint_documents_its_money_statuses(document: dict[str, Any]) -> None:
    operation = document["paths"]["/api/conversations/{conversation_id}/messages"]["post"]
    assert set(operation["responses"]) == {
        "200", "201", "400", "401", "402", "403", "404", "409", "413", "414", "415", "429", "431",
        "502", "503",
    }  # fmt: skip
    assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"]  # streamed
    assert operation["responses"]["402"] == {"$ref": "#/components/responses/PAYMENT_REQUIRED"}
    assert operation["responses"]["502"] == {"$ref": "#/components/responses/BAD_GATEWAY"}


def test_a_gateway_messages_content_is_a_string_or_text_parts(document: dict[str, Any]) -> None:
    content = document["components"]["schemas"]["ChatMessageArgs"]["properties"]["content"]
    assert [choice["type"] for choice in content["oneOf"]] == ["string", "array"]
    assert content["description"] == "blank only in a system or developer message"
