"""The log an operator reads: one JSON line per request (method, route, status, duration, user
id, request id), one per job run, and security events at warning level."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from creditapp import create_app
from creditapp.extensions import db
from creditapp.jobs import run_job
from tests.conftest import Person, utcnow
from tests.helpers import run_job_at
from tests.integration.tcp_proxy import TcpProxy


def _lines(captured: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


def test_each_request_job_run_and_security_event_is_one_json_line(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    person: Person = person_factory()
    capsys.readouterr()
    client.get(f"/api/conversations/{12}", headers={**person.headers, "X-Request-ID": "trace-7"})
    run_job_at(app, "expire-holds", utcnow())
    client.post("/api/auth/logout", headers=person.headers)
    client.get("/api/me", headers=person.headers)  # a revoked token presented
    lines = _lines(capsys.readouterr().err)

    requests = [line for line in lines if line["event"] == "request"]
    first = requests[0]
    assert {key: first[key] for key in ("method", "route", "status", "user_id", "request_id")} == {
        "method": "GET",
        "route": "/api/conversations/<conversation_id>",
        "status": 404,
        "user_id": str(person.id),
        "request_id": "trace-7",
    }
    assert isinstance(first["duration_ms"], int) and first["level"] == "info"
    runs = [line for line in lines if line["event"] == "job_run"]
    assert [(run["job"], run["outcome"], run["summary"]) for run in runs] == [
        ("expire-holds", "success", {"expired": 0})
    ]
    events = [line for line in lines if line["event"] == "security_event"]
    assert [(event["reason"], event["level"]) for event in events] == [("token_revoked", "warning")]


@pytest.mark.postgres_only
def test_a_job_the_database_failed_is_logged_and_raises_its_own_error(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counting a failed run needs the database too: when it is the database that failed, the
    run's line is still written and its own error raised, not the counting's."""
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"])
    cut_off = create_app({"SQLALCHEMY_DATABASE_URI": proxy.url})
    try:
        proxy.cut()
        capsys.readouterr()
        with cut_off.app_context(), pytest.raises(OperationalError):
            try:
                run_job(
                    "expire-holds", db.session, now=utcnow(), actor="tests", settings=app.config
                )
            finally:
                db.session.remove()
    finally:
        proxy.close()
    lines = _lines(capsys.readouterr().err)
    [run] = [line for line in lines if line["event"] == "job_run"]
    assert (run["job"], run["outcome"], run["level"]) == ("expire-holds", "failure", "error")
    [uncounted] = [line for line in lines if line["event"] == "job_outcome_not_counted"]
    assert uncounted["job"] == "expire-holds"


def test_the_libraries_warnings_are_json_lines_with_the_request_id(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flask, SQLAlchemy, Celery and the SDKs log through the standard library: their warnings
    and errors come as the same JSON lines as creditapp's own, their INFO lines not at all."""
    capsys.readouterr()
    with structlog.contextvars.bound_contextvars(request_id="trace-9"):
        logging.getLogger("sqlalchemy.pool").warning("connection %s invalidated", "c1")
        app.logger.error("a library's error")
        logging.getLogger("httpx").info("HTTP Request: POST https://provider.example/")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [
        {key: line[key] for key in ("event", "logger", "level", "request_id")} for line in lines
    ] == [
        {
            "event": "connection c1 invalidated",
            "logger": "sqlalchemy.pool",
            "level": "warning",
            "request_id": "trace-9",
        },
        {
            "event": "a library's error",
            "logger": "creditapp",
            "level": "error",
            "request_id": "trace-9",
        },
    ]
