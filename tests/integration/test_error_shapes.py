"""Error rendering is chosen per blueprint: a door with its own error shape (OpenAI's under
`/v1`, next) gets every failure of its requests in that shape (a bad body, no token, an unknown
URL or method under its prefix, a rate limit, a crash, the database down), while `/api` keeps
the contract's.

The app under test is built by `create_app` with rate limits on and a blueprint of its own, in a
process of its own: a second app in this process would rebind the extensions (the rate limiter,
the OpenAPI document) that every other test's app uses."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
from flask import Flask, Response, jsonify
from marshmallow import Schema, fields

from tests.integration.live_server import ROOT

PREFIX = "/shapes"

# (name, method, path, headers, body): each from a client address of its own, so that only the
# requests meant to meet the rate limit count against the same budget.
PROBES: list[tuple[str, str, str, dict[str, str], str | None]] = [
    ("shapes_400_body", "POST", f"{PREFIX}/things", {}, '{"count": "many"}'),
    ("shapes_400_json", "POST", f"{PREFIX}/things", {}, '{"count": '),
    ("shapes_401", "GET", f"{PREFIX}/mine", {}, None),
    ("shapes_401_bad_token", "GET", f"{PREFIX}/mine", {"Authorization": "Bearer junk"}, None),
    ("shapes_404", "GET", f"{PREFIX}/nowhere", {}, None),
    ("shapes_405", "DELETE", f"{PREFIX}/things", {}, None),
    ("shapes_415", "POST", f"{PREFIX}/things", {"Content-Type": "text/plain"}, "count=1"),
    ("shapes_500", "GET", f"{PREFIX}/broken", {}, None),
    ("shapes_503", "GET", f"{PREFIX}/database", {}, None),
    ("api_400", "POST", "/api/auth/google", {}, '{"id_token": 5}'),
    ("api_401", "GET", "/api/me", {}, None),
    ("api_404", "GET", "/api/nowhere", {}, None),
    ("api_405", "DELETE", "/api/me", {}, None),
    ("outside_404", "GET", "/shapesque", {}, None),
]
# Requests beyond the application's budget (RATELIMIT_APPLICATION below) from one address.
BUDGET = 2
RATE_LIMITED = [
    ("shapes_429", "GET", f"{PREFIX}/open"),
    ("api_429", "GET", "/api/me"),
]


def _shapes_renderer(failure: Any) -> Response:
    """A door's own shape, nothing like the contract's."""
    response = jsonify({"failure": {"kind": failure.code, "text": failure.message}})
    response.status_code = failure.status
    return response


class ThingArgs(Schema):
    count = fields.Integer(required=True, strict=True)


def build_app() -> Flask:
    from creditapp import create_app
    from creditapp.api.errors import render_errors
    from creditapp.api.identity import authenticated
    from creditapp.api.parsing import Blueprint

    app = create_app(
        {
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
            "RATELIMIT_STORAGE_OPTIONS": {},
            "RATELIMIT_APPLICATION": f"{BUDGET} per minute",
        }
    )
    blp = Blueprint("shapes", __name__, url_prefix=PREFIX)

    @blp.route("/things", methods=["POST"])
    @blp.arguments(ThingArgs)
    def things(args: dict[str, Any]) -> Any:
        return {"count": args["count"]}

    @blp.route("/mine", methods=["GET"])
    @authenticated()
    def mine() -> Any:
        return {}

    @blp.route("/open", methods=["GET"])
    def open_() -> Any:
        return {}

    @blp.route("/broken", methods=["GET"])
    def broken() -> Any:
        raise RuntimeError("a bug")

    @blp.route("/database", methods=["GET"])
    def database() -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    app.register_blueprint(blp)
    render_errors(app, _shapes_renderer, blueprint="shapes", url_prefix=PREFIX)
    return app


def probe() -> dict[str, Any]:
    """Every probe's answer: status, headers that matter, body."""
    app = build_app()
    client = app.test_client()
    answers: dict[str, Any] = {}

    def answer(name: str, response: Any) -> None:
        answers[name] = {
            "status": response.status_code,
            "allow": response.headers.get("Allow"),
            "retry_after": response.headers.get("Retry-After"),
            "request_id": response.headers.get("X-Request-ID"),
            "body": response.get_json(silent=True),
        }

    for number, (name, method, path, headers, body) in enumerate(PROBES, start=1):
        headers = {"Content-Type": "application/json", **headers} if body is not None else headers
        response = client.open(
            path,
            method=method,
            headers=headers,
            data=body,
            environ_base={"REMOTE_ADDR": f"10.0.0.{number}"},
        )
        answer(name, response)
    for number, (name, method, path) in enumerate(RATE_LIMITED, start=1):
        for _ in range(BUDGET + 1):
            response = client.open(
                path, method=method, environ_base={"REMOTE_ADDR": f"10.0.1.{number}"}
            )
        answer(name, response)
    return answers


@pytest.fixture(scope="module")
def answers(app: Flask) -> dict[str, Any]:
    """`probe()` in a process of its own, with this run's settings (the `app` fixture put them
    in the environment)."""
    script = (
        "import json; from tests.integration.test_error_shapes import probe; "
        "print(json.dumps(probe()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "CREDITAPP_ENV": "testing"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def _in_shapes_shape(answer: dict[str, Any], status: int, kind: str) -> None:
    assert answer["status"] == status, answer
    assert set(answer["body"]) == {"failure"}, answer
    assert answer["body"]["failure"]["kind"] == kind, answer


def _in_contract_shape(answer: dict[str, Any], status: int, code: str) -> None:
    assert answer["status"] == status, answer
    assert set(answer["body"]) == {"error"}, answer
    error = answer["body"]["error"]
    assert set(error) == {"code", "message", "request_id", "details"}, answer
    assert error["code"] == code and error["request_id"] == answer["request_id"], answer


@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("shapes_400_body", 400, "validation_error"),
        ("shapes_400_json", 400, "malformed_json"),
        ("shapes_401", 401, "unauthorized"),
        ("shapes_401_bad_token", 401, "unauthorized"),
        ("shapes_404", 404, "not_found"),
        ("shapes_405", 405, "method_not_allowed"),
        ("shapes_415", 415, "unsupported_media_type"),
        ("shapes_429", 429, "rate_limited"),
        ("shapes_500", 500, "internal_error"),
        ("shapes_503", 503, "service_unavailable"),
    ],
)
def test_a_blueprint_with_its_own_renderer_answers_in_its_shape(
    answers: dict[str, Any], name: str, status: int, kind: str
) -> None:
    _in_shapes_shape(answers[name], status, kind)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("api_400", 400, "validation_error"),
        ("api_401", 401, "unauthorized"),
        ("api_404", 404, "not_found"),
        ("api_405", 405, "method_not_allowed"),
        ("api_429", 429, "rate_limited"),
        # A prefix is a path segment: /shapesque is not under /shapes.
        ("outside_404", 404, "not_found"),
    ],
)
def test_the_api_keeps_the_contracts_shape(
    answers: dict[str, Any], name: str, status: int, code: str
) -> None:
    _in_contract_shape(answers[name], status, code)


def test_what_a_failure_says_in_headers_survives_any_shape(answers: dict[str, Any]) -> None:
    assert set(answers["shapes_405"]["allow"].split(", ")) == {"OPTIONS", "POST"}
    assert set(answers["api_405"]["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    for name in ("shapes_429", "api_429"):
        assert int(answers[name]["retry_after"]) > 0
    assert answers["shapes_400_body"]["body"]["failure"]["text"] == "The request is not valid."
