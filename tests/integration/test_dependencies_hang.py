"""A dependency that hangs (accepts connections, then answers nothing: a frozen server, a
half-open network) is a dependency that is down, within seconds: Redis through its clients'
socket timeouts, PostgreSQL through a deadline of our own on every statement and commit, a
connect timeout and a pool checkout timeout. Nothing waits for the kernel, whose TCP timeouts
never fire while the peer acknowledges."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from creditapp import ledger
from creditapp.database import (
    DEADLINE_MARGIN_SECONDS,
    configure_engine,
    longer_statements,
    write_transaction,
)
from creditapp.extensions import db
from creditapp.ledger.models import Account, AuditRecord, Grant, LedgerEntry
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.helpers import assert_consistent, clear_rate_limit_counters, scalar
from tests.integration.live_server import call, live_server
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres_only, pytest.mark.real_clock]

CREDIT = 1_000_000
# What a client waits at most here: the answers must come well before.
PATIENCE_SECONDS = 30
# The application name of connections through the proxy.
PROXIED = "through-proxy"


def timed_call(*args: Any, **kwargs: Any) -> tuple[float, int, dict[str, str], bytes]:
    started = time.monotonic()
    status, headers, body = call(*args, timeout=PATIENCE_SECONDS, **kwargs)
    return time.monotonic() - started, status, headers, body


def assert_unavailable(status: int, body: bytes) -> dict[str, Any]:
    assert status == 503, (status, body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == "service_unavailable"
    return error


@pytest.fixture
def proxied_database(app: Flask) -> Iterator[TcpProxy]:
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"], application_name=PROXIED)
    yield proxy
    proxy.close()
    # A server session whose client was cut off may hold its locks until it notices; the
    # next test's cleanup must not wait for that.
    with app.app_context():
        db.session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": PROXIED},
        )
        db.session.remove()


@pytest.fixture
def proxied_redis(app: Flask) -> Iterator[TcpProxy]:
    proxy = TcpProxy.in_front_of(app.config["REDIS_URL"])
    yield proxy
    proxy.close()


def test_a_hung_redis_is_a_redis_that_is_down(
    app: Flask, person_factory: Any, admin: Person, proxied_redis: TcpProxy
) -> None:
    """Rate limits fall back to memory, enqueueing a job answers 503, /readyz says so within
    2 s; and once Redis answers again, everything is as before."""
    clear_rate_limit_counters(app)
    person = person_factory(credits=CREDIT)
    env = {
        "REDIS_URL": proxied_redis.url,
        "CELERY_BROKER_URL": proxied_redis.url,
        "RATELIMIT_ENABLED": "true",
    }
    compensations = "/api/admin/credit/process-compensations"
    with live_server(env, threads=4) as base:
        assert call("GET", f"{base}/api/credit/balance", person.token)[0] == 200
        proxied_redis.hang()
        with ThreadPoolExecutor(max_workers=4) as pool:
            balances = [
                pool.submit(timed_call, "GET", f"{base}/api/credit/balance", person.token)
                for _ in range(4)
            ]
            for answer in balances:
                elapsed, status, _headers, body = answer.result()
                assert status == 200, body
                assert elapsed < 10, elapsed
        elapsed, status, _headers, body = timed_call("GET", f"{base}/readyz")
        error = assert_unavailable(status, body)
        assert error["details"] == {
            "database": "ok",
            "redis": "unreachable",
            "rate_limits": "memory_fallback",
        }
        assert elapsed < 2, elapsed
        elapsed, status, _headers, body = timed_call(
            "POST", f"{base}{compensations}", admin.token, headers={"Idempotency-Key": "hung-1"}
        )
        assert assert_unavailable(status, body)["details"] == {"broker": "unreachable"}
        assert elapsed < 10, elapsed

        proxied_redis.restore()
        deadline = time.monotonic() + PATIENCE_SECONDS
        while (status := timed_call("GET", f"{base}/readyz")[1]) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        elapsed, status, _headers, body = timed_call(
            "POST", f"{base}{compensations}", admin.token, headers={"Idempotency-Key": "hung-2"}
        )
        assert status == 202, body


def test_a_hung_database_answers_503_within_seconds(
    app: Flask, person_factory: Any, proxied_database: TcpProxy
) -> None:
    """Requests on pooled connections meet the statement deadline, requests that open a new
    connection meet the connect timeout, /readyz answers 503 within 2 s; once the database
    answers again, so does every request."""
    person = person_factory(credits=CREDIT)
    env = {"DATABASE_URL": proxied_database.url, "DATABASE_POOL_SIZE": "2"}
    balance = "/api/credit/balance"
    with live_server(env, threads=4) as base:
        assert call("GET", f"{base}{balance}", person.token)[0] == 200
        proxied_database.hang()
        elapsed, status, _headers, body = timed_call("GET", f"{base}/readyz")
        assert assert_unavailable(status, body)["details"]["database"] == "unreachable"
        assert elapsed < 2, elapsed
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = [
                pool.submit(timed_call, "GET", f"{base}{balance}", person.token) for _ in range(6)
            ]
            for answer in answers:
                elapsed, status, _headers, body = answer.result()
                assert_unavailable(status, body)
                assert elapsed < 20, elapsed
        # The pool's connections were given up: this request opens a new one, and meets the
        # connect timeout.
        elapsed, status, _headers, body = timed_call("GET", f"{base}{balance}", person.token)
        assert_unavailable(status, body)
        assert elapsed < 10, elapsed

        proxied_database.restore()
        deadline = time.monotonic() + PATIENCE_SECONDS
        while (status := timed_call("GET", f"{base}{balance}", person.token)[1]) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.25)
        assert timed_call("GET", f"{base}/readyz")[1] == 200


def _grant_as_the_database_freezes(
    app: Flask, proxy: TcpProxy, person: Person, *, before: str
) -> None:
    """A grant on a connection through `proxy`, whose database stops answering `before` its
    first statement or `before` the commit (everything else sent). The deadline gives up on it."""
    engine = create_engine(proxy.url, **app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    configure_engine(engine, statement_timeout_seconds=1)
    session = Session(engine)
    session.execute(text("SELECT 1"))  # connected: what follows meets the deadline
    session.rollback()
    started = time.monotonic()
    # The ledger's own SQL raises the driver's error; the rest comes through SQLAlchemy.
    database_down = (OperationalError, psycopg.OperationalError)
    with (
        pytest.raises(database_down) as failure,
        write_transaction(session),
    ):
        if before == "statement":
            proxy.hang()
        ledger.grant(
            session,
            account_id=person.account_id,
            amount=5 * CREDIT,
            source="admin",
            reason="granted as the database froze",
            context=TEST_CONTEXT,
            now=utcnow(),
        )
        if before == "commit":
            proxy.hang()
    # The deadline's error, or the one that rolling back the connection it closed raised. Its
    # statement timeout (1 s) for each statement the driver waited for at once (the ledger sends
    # its statements together), and the margin (2 s).
    seen = f"{failure.value} {failure.value.__context__}"
    waited = re.search(r"the database did not answer within (\d+) s", seen)
    assert waited is not None, seen
    statements = int(waited[1]) - DEADLINE_MARGIN_SECONDS
    assert 1 <= statements <= 6, seen
    assert time.monotonic() - started < int(waited[1]) + 5
    session.close()
    engine.dispose()


def _account(app: Flask, person: Person) -> tuple[int, int, int, int]:
    """The person's balance, grants, ledger entries and audit records."""
    return (
        scalar(app, select(Account.balance).where(Account.id == person.account_id)),
        scalar(app, _count(Grant, Grant.account_id == person.account_id)),
        scalar(app, _count(LedgerEntry, LedgerEntry.account_id == person.account_id)),
        scalar(app, _count(AuditRecord, AuditRecord.account_id == person.account_id)),
    )


def _count(model: Any, condition: Any) -> Any:
    return select(func.count()).select_from(model).where(condition)


def test_a_statement_cut_by_the_deadline_leaves_nothing_half_done(
    app: Flask, person_factory: Any, proxied_database: TcpProxy
) -> None:
    """The deadline abandons the transaction; the server, when it answers again, rolls back
    what it never saw committed, and commits whole what it did: never half of it. (A client
    that saw an error and retries with its Idempotency-Key finds the first outcome.)"""
    person = person_factory(credits=CREDIT)
    before = _account(app, person)
    assert before == (CREDIT, 1, 1, 1)

    _grant_as_the_database_freezes(app, proxied_database, person, before="statement")
    proxied_database.restore()
    time.sleep(1)  # what was held back reaches the server, then the end of the connection
    assert _account(app, person) == before

    _grant_as_the_database_freezes(app, proxied_database, person, before="commit")
    proxied_database.restore()
    deadline = time.monotonic() + PATIENCE_SECONDS
    while _account(app, person) == before:  # the commit, held back, arrives now
        assert time.monotonic() < deadline, "the commit never arrived"
        time.sleep(0.1)
    assert _account(app, person) == (6 * CREDIT, 2, 2, 2)
    assert_consistent(app)


def test_a_job_may_run_longer_statements_than_a_request(app: Flask) -> None:
    """A request's statement is cancelled by the server after DATABASE_STATEMENT_TIMEOUT_SECONDS;
    a job's transactions raise it to JOB_STATEMENT_TIMEOUT_SECONDS, a migration's lift it."""
    engine = create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        connect_args={"options": "-c statement_timeout=1000"},
    )
    configure_engine(engine, statement_timeout_seconds=1)
    try:
        with Session(engine) as session:
            assert session.scalar(text("SHOW statement_timeout")) == "1s"
            with pytest.raises(OperationalError, match="canceling statement due to statement"):
                session.execute(text("SELECT pg_sleep(1.5)"))
        with longer_statements(30), Session(engine) as session:
            assert session.scalar(text("SHOW statement_timeout")) == "30s"
            session.execute(text("SELECT pg_sleep(1.5)"))
        with longer_statements(0), Session(engine) as session:  # a migration's: no limit
            assert session.scalar(text("SHOW statement_timeout")) == "0"
            session.execute(text("SELECT pg_sleep(3.5)"))  # past the client's deadline too
        with Session(engine) as session:
            assert session.scalar(text("SHOW statement_timeout")) == "1s"
    finally:
        engine.dispose()
