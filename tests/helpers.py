"""Helpers every test module may use (no test module imports another's): the error shape, the
chat path, jobs, and looking into the database."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from werkzeug.test import TestResponse

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.auth.models import User
from creditapp.billing import compensations
from creditapp.billing.models import UsageRecord
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.jobs import run_job
from creditapp.ledger import alerts
from creditapp.ledger.models import AuditRecord, LedgerEntry
from creditapp.ledger.sql import LedgerSql
from creditapp.pricing import book
from creditapp.purchases.models import Purchase
from creditapp.signals.models import WebhookEndpoint
from tests.conftest import BACKEND, TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.fake_stripe import FakeStripe, event_body

MILLION_CREDITS = 1_000_000 * 1_000_000
GRANT = "/api/admin/credit/grant"
ADJUST = "/api/admin/credit/adjust"


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The response is the contract's error shape with this status and code."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["message"], str) and error["message"]
    return error


# The database


def scalar(app: Flask, query: Any) -> Any:
    with app.app_context():
        value = db.session.scalar(query)
        db.session.remove()
    return value


def audited(app: Flask, *actions: str) -> list[tuple[str, str, str, dict[str, object]]]:
    """The audit records of these actions, oldest first: (action, actor type, actor, details)."""
    with app.app_context():
        records = db.session.scalars(
            select(AuditRecord).where(AuditRecord.action.in_(actions)).order_by(AuditRecord.id)
        ).all()
        found = [(r.action, r.actor_type, r.actor_id, r.details) for r in records]
        db.session.remove()
    return found


def ledger_rows(app: Flask) -> list[tuple[str, int, int]]:
    """Every ledger entry as (type, amount, balance_after), oldest first."""
    with app.app_context():
        rows = db.session.execute(
            select(LedgerEntry.type, LedgerEntry.amount, LedgerEntry.balance_after).order_by(
                LedgerEntry.id
            )
        ).all()
        db.session.remove()
    return [(row[0], row[1], row[2]) for row in rows]


def assert_consistent(app: Flask, account_ids: list[int] | None = None) -> None:
    """Reconciliation finds no drift (in the accounts named, or all)."""
    with app.app_context():
        assert ledger.reconcile(db.session, account_ids=account_ids) == []
        db.session.remove()


# Jobs


def run_job_at(app: Flask, name: str, now: datetime) -> dict[str, Any]:
    """Run a job to completion as of `now`, as `flask jobs run` does."""
    with app.app_context():
        try:
            return run_job(name, db.session, now=now, actor="tests", settings=app.config)
        finally:
            db.session.remove()


def run_job_at_once(app: Flask, name: str, now: datetime, times: int) -> list[dict[str, Any]]:
    """The job `times` times in threads released together, each with its own connections."""
    barrier = threading.Barrier(times)

    def one(_index: int) -> dict[str, Any]:
        barrier.wait(timeout=30)
        return run_job_at(app, name, now)

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(one, range(times)))


# The chat path


def add_price(
    app: Flask,
    provider: str,
    model: str,
    *,
    input: str,
    output: str,
    cached_input: str | None = None,
    cache_write: str | None = None,
    prompt_tiers: list[dict[str, Any]] | None = None,
    effective_from: Any = None,
) -> int:
    """A committed price row, in force since an hour ago unless told otherwise."""
    with app.app_context():
        with write_transaction(db.session):
            price = book.add(
                db.session,
                provider=provider,
                model=model,
                rates=book.Rates(
                    Decimal(input),
                    Decimal(output),
                    None if cached_input is None else Decimal(cached_input),
                    None if cache_write is None else Decimal(cache_write),
                ),
                effective_from=effective_from or utcnow() - timedelta(hours=1),
                prompt_tiers=prompt_tiers,
                source="tests",
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        price_id = price.id
        db.session.remove()
    return int(price_id)


def start_conversation(client: FlaskClient, person: Person, provider: str, model: str) -> str:
    """A character of the person's own for the model, and a conversation with it."""
    character = client.post(
        "/api/characters",
        json={"name": "Tester", "system_prompt": "Be brief.", "provider": provider, "model": model},
        headers=person.headers,
    )
    assert character.status_code == 201, character.get_json()
    conversation = client.post(
        "/api/conversations",
        json={"character_id": character.get_json()["id"]},
        headers=person.headers,
    )
    assert conversation.status_code == 201, conversation.get_json()
    return str(conversation.get_json()["id"])


def send(
    client: FlaskClient,
    person: Person,
    conversation_id: str,
    content: str = "Hello there",
    *,
    key: str | None = None,
    **fields: Any,
) -> TestResponse:
    return client.post(
        f"/api/conversations/{conversation_id}/messages",
        json={"content": content, **fields},
        headers={**person.headers, "Idempotency-Key": key or secrets.token_hex(8)},
    )


def charged_messages(
    app: Flask, client: FlaskClient, person: Person, fake: FakeProviders, count: int
) -> list[str]:
    """`count` messages to an OpenAI model, 0.2 credits each; returns the replies' ids."""
    add_price(app, "openai", "gpt-jobs", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-jobs")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}
    fake.script("openai", *(Answer(usage=usage) for _ in range(count)))
    return [send(client, person, conversation).get_json()["reply"]["id"] for _ in range(count)]


def owe(app: Flask, count: int) -> None:
    """A pending compensation for each of the first `count` usage records."""
    with app.app_context():
        with write_transaction(db.session):
            for usage in db.session.scalars(
                select(UsageRecord).order_by(UsageRecord.id).limit(count)
            ):
                compensations.record(
                    db.session, usage=usage, reason="test", requested_by="tests", now=utcnow()
                )
        db.session.remove()


@contextmanager
def database_refuses(app: Flask, table: str, condition: str = "TRUE") -> Iterator[None]:
    """While open, the database refuses to insert rows into `table` for which `condition` (SQL
    on NEW) holds: a real failure inside whatever transaction tries it, on either database."""
    if BACKEND == "postgresql":
        create = [
            f"""CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                  IF {condition} THEN RAISE EXCEPTION 'refused by the test'; END IF;
                  RETURN NEW; END $$""",
            f"""CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW
                EXECUTE FUNCTION refuse_{table}()""",
        ]
        drop = [f"DROP TRIGGER refuse_{table} ON {table}", f"DROP FUNCTION refuse_{table}()"]
    else:
        sqlite_condition = condition.replace("TRUE", "1")
        create = [
            f"""CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {sqlite_condition}
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"""
        ]
        drop = [f"DROP TRIGGER refuse_{table}"]
    _execute(app, create)
    try:
        yield
    finally:
        _execute(app, drop)


def _execute(app: Flask, statements: list[str]) -> None:
    with app.app_context():
        with write_transaction(db.session):
            for statement in statements:
                db.session.execute(text(statement))
        db.session.remove()


def clear_rate_limit_counters(app: Flask) -> None:
    """Counters are kept per user id (and ids restart with every test) or per client IP: a
    test that counts starts with whole budgets."""
    if app.config["REDIS_URL"]:
        storage = redis.Redis.from_url(app.config["REDIS_URL"])
        keys = storage.keys("LIMITS*")
        if keys:
            storage.delete(*keys)


def self_signed_certificate(key: CertificateIssuerPrivateKeyTypes, common_name: str) -> bytes:
    """A PEM certificate for `key` naming `common_name`, valid from 2000 to 2099,
    issued by itself."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Valid whatever date the suite runs at (CREDITAPP_TEST_CLOCK moves Python's clock, not
        # OpenSSL's, which checks it).
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2099, 12, 31, tzinfo=UTC))
        # Its name as a TLS client checks it, and its own authority (a client trusts it alone).
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def give_credits(account_id: int, amount: int, reason: str = "test credits") -> None:
    """A committed promo grant of `amount` µcr to the account (in the caller's app context)."""
    with write_transaction(db.session):
        ledger.grant(
            db.session,
            account_id=account_id,
            amount=amount,
            source="promo",
            reason=reason,
            context=TEST_CONTEXT,
            now=utcnow(),
        )


def new_team(
    owner_id: int, *member_ids: int, name: str = "Team", cap: int | None = None
) -> tuple[int, int]:
    """A committed team of `owner_id` with these members (capped at `cap` a month, if given),
    made as the API makes one (inside an app context): (team id, the team's account id)."""
    now = utcnow()
    with write_transaction(db.session):
        team_id = teams.create(
            db.session, owner_id=owner_id, name=name, context=TEST_CONTEXT, now=now
        ).id
        for member_id in member_ids:
            member = db.session.get(User, member_id)
            assert member is not None
            teams.add_member(
                db.session,
                team_id=team_id,
                actor_id=owner_id,
                email=member.email,
                role="member",
                cap=cap,
                cap_period="month",
                context=TEST_CONTEXT,
                now=now,
            )
        account_id = accounts.of_team(db.session, team_id)
    return team_id, account_id


# The secret of the endpoints `new_endpoint` saves (a receiver verifies with it).
ENDPOINT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def new_endpoint(person: Person, url: str, *events: str, enabled: bool = True) -> int:
    """A committed webhook endpoint of the person's account listening to `events` (the balance
    events if none), as the API saves one (inside an app context)."""
    with write_transaction(db.session):
        endpoint = WebhookEndpoint(
            account_id=person.account_id,
            created_by=person.id,
            url=url,
            events=",".join(events or ("balance.low", "balance.depleted")),
            secret=ENDPOINT_SECRET,
            enabled=enabled,
            created_at=utcnow(),
        )
        db.session.add(endpoint)
        db.session.flush()
        alerts.watch(LedgerSql(db.session), account_id=person.account_id)
    return int(endpoint.id)


# Purchases through the fake Stripe

STRIPE_WEBHOOK = "/api/webhooks/stripe"


def buy(client: FlaskClient, person: Person, credits: Any = "5000", **fields: Any) -> Any:
    return client.post(
        "/api/credit/purchases",
        json={"credits": credits, **fields},
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
    )


def deliver(client: FlaskClient, fake: FakeStripe, event: dict[str, Any], **signing: Any) -> Any:
    """Post an event as Stripe does: its exact bytes, signed (or as `signing` says)."""
    body = signing.pop("body", None) or event_body(event)
    headers = {"Content-Type": "application/json"}
    signature = signing.pop("signature", None)
    if signature is None:
        signature = fake.sign(body, **signing)
    if signature:
        headers["Stripe-Signature"] = signature
    return client.post(STRIPE_WEBHOOK, data=body, headers=headers)


def session_of(client: FlaskClient, person: Person, purchase_id: str) -> str:
    with client.application.app_context():
        found = db.session.get(Purchase, int(purchase_id))
        assert found is not None and found.checkout_session_id is not None
        session_id = found.checkout_session_id
        db.session.remove()
    return session_id


def started(
    client: FlaskClient, fake: FakeStripe, person: Person, credits: str = "5000"
) -> tuple[str, str]:
    made = buy(client, person, credits)
    assert made.status_code == 201, made.get_json()
    purchase_id = made.get_json()["id"]
    return purchase_id, session_of(client, person, purchase_id)


def until(done: Callable[[], bool], *, within: float = 10) -> bool:
    """Whether `done` came to hold within `within` seconds (asked every 20 ms)."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def waits_for_a_lock() -> bool:
    """Whether a session of the tests' database waits for a lock (PostgreSQL; asked on a
    connection of its own, inside an app context)."""
    with db.engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def metric_value(body: str, name: str, **labels: str) -> float:
    """A sample's value in a /metrics body (0: not there)."""
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        ),
        0.0,
    )
