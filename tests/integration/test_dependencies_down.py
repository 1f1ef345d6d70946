"""A dependency that is down gets 503 in the contract's shape, never a 500."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from tests.integration.live_server import call, live_server

UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/creditapp"

pytestmark = pytest.mark.real_clock


def test_an_unreachable_database_is_a_503(app: Flask, person_factory) -> None:
    user = person_factory()
    with live_server({"DATABASE_URL": UNREACHABLE_DATABASE}) as base:
        status, _, body = call("GET", f"{base}/readyz")
        assert status == 503
        assert json.loads(body)["error"]["details"]["database"] == "unreachable"
        for path in ("/api/me", "/api/credit/balance"):
            status, headers, body = call("GET", f"{base}{path}", user.token)
            assert status == 503, body
            error = json.loads(body)["error"]
            assert error["code"] == "service_unavailable"
            assert error["request_id"] == headers["X-Request-ID"]
