"""Schemathesis over the whole API, as an attacker would fuzz it: every operation of the
OpenAPI document, with an admin's token and a user's, and the gateway's with an API key,
against a real gunicorn. No request may
get a 5xx, and every response must be one the document describes (`CHECKS`).
`SCHEMATHESIS_EXAMPLES` sets the examples per operation (default 25); the seed it used is in
the output to replay a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Person
from tests.helpers import add_price, start_conversation
from tests.integration.live_server import live_server

pytestmark = pytest.mark.real_clock
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES") or "25"
SCHEMATHESIS = Path(sys.executable).parent / "st"
# No 5xx, and every response is one the document describes: its status, its content type, its
# required headers and its body's schema.
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


@pytest.mark.parametrize("role", ["admin", "user", "api_key"])
def test_generated_requests_get_only_documented_responses(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    role: str,
    tmp_path: Path,
) -> None:
    user = person_factory(credits=1_000 * 1_000_000)
    add_price(app, "openai", "gpt-fuzz", input="1", output="1")
    start_conversation(client, user, "openai", "gpt-fuzz")
    token = (admin if role == "admin" else user).token
    # The gateway's door takes an API key (and answers in OpenAI's error shape); the others
    # take access tokens.
    paths = ["--exclude-path-regex", "^/v1/"]
    if role == "api_key":
        add_price(app, "demo", "fuzz-echo", input="1", output="1")
        made = client.post("/api/keys", json={"name": "fuzz", "limit": "50"}, headers=user.headers)
        token, paths = made.get_json()["key"], ["--include-path-regex", "^/v1/"]
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}, threads=4) as base:
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{base}/api/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                EXAMPLES,
                # One worker: schemathesis's threads meet a CPython 3.11 race in ast.parse
                # ("AST constructor recursion depth mismatch") that fails the run, not the API.
                "--workers",
                "1",
                "--request-timeout",
                "20",
                # Signing its own token out would leave the rest of the run only 401s; the
                # generated-input test covers these operations, last.
                "--exclude-path-regex",
                "logout|revoke-sessions",
                *paths,
                "--no-color",
            ],
            # Its cache of earlier runs (.schemathesis/) goes in a folder of this test's own.
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, _report(run.stdout) + run.stderr[-2000:]


def _report(output: str) -> str:
    """Schemathesis's report, each line cut short: a failing request's URL can be kilobytes."""
    return "\n".join(line[:400] for line in output.splitlines()[-300:])
