"""Test fixtures. The whole suite runs twice: on SQLite and on PostgreSQL + Redis.

CREDITAPP_TEST_DATABASE picks the run (sqlite | postgresql). The PostgreSQL run creates its own
database through TEST_PG_ADMIN_URL and drops it afterwards; it uses Redis at TEST_REDIS_URL for
rate limits. With CI=true an unreachable PostgreSQL or Redis fails the run; elsewhere the
PostgreSQL run is skipped with a message.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ["CREDITAPP_ENV"] = "testing"

import psycopg
import pytest
import redis
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from creditapp import accounts, create_app, ledger
from creditapp.auth import users
from creditapp.auth.models import Tier, User
from creditapp.auth.tokens import issue_access_token
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.fake_providers import FakeProviders
from tests.fake_stripe import FakeStripe

BACKEND = os.environ.get("CREDITAPP_TEST_DATABASE", "sqlite")
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"


def worker_redis_url(url: str, worker: int) -> str:
    """The Redis database of xdist worker `worker` (gw0, gw1, ...): TEST_REDIS_URL's for the
    first, then counting down (15, 14 by default), so that a worker's rate limits, Celery broker
    and beat never meet another's. TEST_REDIS_URL is the one setting that decides every Redis
    database the suite touches (`make test`'s chaos step empties and uses its database after)."""
    base, _, number = url.rpartition("/")
    if not (number.isascii() and number.isdigit()) or "//" not in base:
        raise ValueError(f"TEST_REDIS_URL must end in a database number, got {url!r}")
    if int(number) < worker:
        raise ValueError(
            f"TEST_REDIS_URL's database {number} leaves none for xdist worker gw{worker}: the "
            f"workers count down from it (choose {worker} or more)"
        )
    return f"{base}/{int(number) - worker}"


IN_CI = os.environ.get("CI", "").lower() == "true"
# CREDITAPP_TEST_CLOCK=2028-02-29T12:00:00Z runs the suite as if it were then (the clock ticks
# on from there): no test may depend on today's date.
TEST_CLOCK = os.environ.get("CREDITAPP_TEST_CLOCK")
UNFUNDED_TIER = "unfunded"
# What a process of the tests' needs for webhooks to reach a receiver on loopback.
LOOPBACK_WEBHOOKS = {"WEBHOOK_ALLOW_PRIVATE": "true"}
TEST_CONTEXT = ledger.AuditContext(actor_type="system", actor_id="tests")


def _unreachable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {error}"
    if IN_CI:
        pytest.exit(f"FAIL: {message} (CI=true: the PostgreSQL run may not be skipped)", 1)
    pytest.exit(f"SKIPPED the PostgreSQL run: {message}", 0)


def pytest_configure(config: pytest.Config) -> None:
    if TEST_CLOCK:
        moment = datetime.fromisoformat(TEST_CLOCK.replace("Z", "+00:00"))
        time_machine.travel(moment, tick=True).start()


def pytest_report_header(config: pytest.Config) -> str:
    return f"creditapp: {BACKEND}" + (f", clock moved to {TEST_CLOCK}" if TEST_CLOCK else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_postgres = pytest.mark.skip(reason="needs PostgreSQL row locks and concurrent commits")
    needs_real_clock = pytest.mark.skip(reason="other processes read the real clock")
    # Tests that open tens of connections or start servers run on one xdist worker, one after
    # another (`--dist loadgroup`): two at once would exceed PostgreSQL's 100 connections.
    one_at_a_time = pytest.mark.xdist_group("many_connections")
    for item in items:
        if BACKEND != "postgresql" and "postgres_only" in item.keywords:
            item.add_marker(needs_postgres)
        if TEST_CLOCK and "real_clock" in item.keywords:
            item.add_marker(needs_real_clock)
        if "postgres_only" in item.keywords or "real_clock" in item.keywords:
            item.add_marker(one_at_a_time)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'creditapp.db'}"
        return
    name = f"creditapp_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        _unreachable("PostgreSQL", error)
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    if BACKEND == "sqlite":
        return None
    try:
        url = worker_redis_url(TEST_REDIS_URL, XDIST_WORKER)
    except ValueError as error:
        pytest.exit(f"FAIL: {error}", 4)
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.ping()
        client.flushdb()
    except redis.RedisError as error:
        _unreachable("Redis", error)
    return url


@pytest.fixture(scope="session")
def fake_providers() -> Iterator[FakeProviders]:
    """The providers' loopback twin; the app's SDK clients point at it."""
    fake = FakeProviders()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def apps_stripe() -> Iterator[FakeStripe]:
    """Stripe's loopback twin; the app's Stripe client points at it (its webhooks are sent to
    whichever server a test names in `webhook_url`)."""
    fake = FakeStripe()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def fake_stripe(apps_stripe: FakeStripe) -> FakeStripe:
    """The app's Stripe, by the name tests use (a module may have a fake of its own by that
    name: the app keeps its own)."""
    return apps_stripe


@pytest.fixture(scope="session")
def app(
    database_url: str,
    redis_url: str | None,
    fake_providers: FakeProviders,
    apps_stripe: FakeStripe,
) -> Iterator[Flask]:
    os.environ.update(fake_providers.base_urls())
    os.environ.update(apps_stripe.environment())
    # Stripe's answers reach the tests at once: its failures are tested as they come.
    os.environ["STRIPE_TIMEOUT_SECONDS"] = "2"
    # Failures reach the tests at once: retries are tested on their own.
    os.environ["PROVIDER_MAX_RETRIES"] = "0"
    os.environ["PROVIDER_TIMEOUT_SECONDS"] = "1"
    os.environ["DATABASE_URL"] = database_url
    # Room for 64 threads to hold a connection each at the same moment, closed again after:
    # a burst leaves no idle connections behind for the next test to run short of.
    os.environ.setdefault("DATABASE_POOL_SIZE", "5")
    os.environ.setdefault("DATABASE_MAX_OVERFLOW", "70")
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
        os.environ["CELERY_BROKER_URL"] = redis_url
    else:
        os.environ.pop("REDIS_URL", None)
        # Tasks enqueued on SQLite runs stay in this process (no worker is started there).
        os.environ["CELERY_BROKER_URL"] = "memory://"
    application = create_app()
    # The tests' webhook receivers listen on loopback; the URL rules are tested with it off.
    # (Set on this app, not in the environment, which production settings refuse it in.)
    application.config["WEBHOOK_ALLOW_PRIVATE"] = True
    with application.app_context():
        upgrade(directory=str(Path(__file__).resolve().parent.parent / "migrations"))
        with write_transaction(db.session):
            # A tier without subscription credits, so that balances in tests are exact.
            db.session.add(
                Tier(
                    name=UNFUNDED_TIER,
                    monthly_credits=0,
                    allowed_models=["*"],
                    default_max_tokens=256,
                    max_max_tokens=1024,
                )
            )
        db.session.remove()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def ctx(app: Flask) -> Iterator[Flask]:
    """An app context for tests that call services directly."""
    with app.app_context():
        yield app
        db.session.remove()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Person:
    id: int
    email: str
    account_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_person(
    app: Flask,
    email: str,
    *,
    role: str = "user",
    tier: str = UNFUNDED_TIER,
    credits: int = 0,
    joined_at: datetime | None = None,
) -> Person:
    """A committed user with an account (and `credits` µcr granted as promo credits), who
    joined now or at `joined_at` (their subscription's anchor and first period)."""
    joined_at = joined_at or utcnow()
    with app.app_context():
        with write_transaction(db.session):
            user: User = users.create(
                db.session,
                email=email,
                role=role,
                tier_name=tier,
                context=TEST_CONTEXT,
                now=joined_at,
            )
            account_id = accounts.of_user(db.session, user.id)
            if credits:
                ledger.grant(
                    db.session,
                    account_id=account_id,
                    amount=credits,
                    source="promo",
                    reason="test credits",
                    context=TEST_CONTEXT,
                    now=joined_at,
                )
        with write_transaction(db.session):
            token = issue_access_token(
                db.session, user, now=utcnow(), expires_in=timedelta(hours=1)
            )
        person = Person(user.id, user.email, account_id, token)
        db.session.remove()
        return person


@pytest.fixture
def person_factory(app: Flask):  # type: ignore[no-untyped-def]
    def make(email: str | None = None, **kwargs) -> Person:  # type: ignore[no-untyped-def]
        return create_person(app, email or f"{secrets.token_hex(4)}@example.com", **kwargs)

    return make


@pytest.fixture
def admin(person_factory) -> Person:  # type: ignore[no-untyped-def]
    return person_factory("admin@example.com", role="admin")
