"""The deliver-webhooks job against a receiver on loopback that verifies every signature with
`standardwebhooks`: retries with one `webhook-id`, 410 disabling its endpoint, the schedule's
last attempt failing, two runs at once posting each event once, a process killed after its
commit or while posting losing nothing, the URL rules at registration and at delivery, no
redirect followed, the purge after the retention, and the metrics of it all."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.errors import WebhookUrlRefused
from creditapp.extensions import db
from creditapp.ledger import alerts, outbox
from creditapp.ledger.models import AuditRecord
from creditapp.ledger.sql import LOCK_ACCOUNT, LedgerSql
from creditapp.signals import delivery, endpoints, urls
from creditapp.signals.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.conftest import LOOPBACK_WEBHOOKS, TEST_CONTEXT, Person, utcnow
from tests.helpers import (
    ENDPOINT_SECRET,
    audited,
    new_endpoint,
    run_job_at,
    run_job_at_once,
    scalar,
    self_signed_certificate,
    until,
    waits_for_a_lock,
)
from tests.integration.live_server import ROOT, stop
from tests.webhook_receiver import Answer, WebhookReceiver

CR = 1_000_000
SECRET = ENDPOINT_SECRET
JOB = "deliver-webhooks"
# How long a claimed delivery is left alone (the default 10 s timeout, to connect and to read).
LEASE = timedelta(seconds=2 * 10 + delivery.LEASE_MARGIN_SECONDS)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def person(ctx: Flask, person_factory: Any) -> Person:
    made: Person = person_factory(credits=100 * CR)
    return made


def emit(person: Person, count: int = 1, *, now: datetime | None = None) -> list[int]:
    """`count` balance.low events of the person's account, committed."""
    with write_transaction(db.session):
        sql = LedgerSql(db.session)
        return [
            outbox.emit(
                sql,
                account_id=person.account_id,
                event_type="balance.low",
                data={"threshold": str(n), "available": "0"},
                now=now or utcnow(),
            )
            for n in range(1, count + 1)
        ]


def deliveries() -> list[WebhookDelivery]:
    db.session.rollback()
    return list(
        db.session.scalars(
            select(WebhookDelivery)
            .order_by(WebhookDelivery.id)
            .execution_options(populate_existing=True)
        )
    )


def only_delivery() -> WebhookDelivery:
    [found] = deliveries()
    return found


def attempts_counted(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("creditapp_webhook_deliveries_total", {"outcome": outcome}) or 0
    )


def test_a_threshold_crossed_is_posted_signed_with_its_event(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    with write_transaction(db.session):
        alerts.set_thresholds(
            db.session, account_id=person.account_id, amounts=[50 * CR], now=utcnow()
        )
    with write_transaction(db.session):
        ledger.adjust(
            db.session,
            account_id=person.account_id,
            amount=-60 * CR,
            reason="spent",
            context=TEST_CONTEXT,
            now=utcnow(),
        )
    event = db.session.scalars(select(WebhookEvent)).one()
    delivered_before = attempts_counted("delivered")

    now = utcnow()
    summary = run_job_at(app, JOB, now)

    assert summary["delivered"] == 1
    assert receiver.failures == []
    [request] = receiver.received
    assert request.webhook_id == f"evt_{event.id}"
    assert request.payload == {
        "type": "balance.low",
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }
    assert event.data["threshold"] == "50" and event.data["available"] == "40"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("creditapp")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    row = only_delivery()
    assert (row.status, row.attempts, row.last_status, row.next_attempt_at) == (
        "delivered",
        1,
        200,
        None,
    )
    assert row.delivered_at == row.last_attempt_at == now
    assert attempts_counted("delivered") == delivered_before + 1
    assert run_job_at(app, JOB, now + timedelta(days=1))["delivered"] == 0
    assert len(receiver.received) == 1


def test_500_twice_then_200_is_delivered_on_the_third_attempt_with_one_webhook_id(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    [event_id] = emit(person)
    receiver.script(500, 500, 200)
    start = utcnow()

    assert run_job_at(app, JOB, start)["retrying"] == 1
    row = only_delivery()
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
    assert row.next_attempt_at == start + timedelta(seconds=5)  # the schedule's first entry
    assert run_job_at(app, JOB, start + timedelta(seconds=4))["retrying"] == 0  # not due yet
    second = start + timedelta(seconds=5)
    assert run_job_at(app, JOB, second)["retrying"] == 1
    assert only_delivery().next_attempt_at == second + timedelta(seconds=300)
    assert run_job_at(app, JOB, second + timedelta(seconds=300))["delivered"] == 1

    row = only_delivery()
    assert (row.status, row.attempts, row.last_status, row.last_error) == (
        "delivered",
        3,
        200,
        None,
    )
    assert receiver.ids() == {f"evt_{event_id}": 3}
    assert receiver.failures == []
    bodies = {request.body for request in receiver.received}
    assert len(bodies) == 1  # the same body every time; only the signature's time moves


def test_a_receiver_down_for_a_while_gets_the_event_once_it_recovers(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    [event_id] = emit(person)
    receiver.fail_for(60)
    start = utcnow()
    assert run_job_at(app, JOB, start)["retrying"] == 1
    receiver.fail_for(0)  # recovered
    assert run_job_at(app, JOB, start + timedelta(seconds=5))["delivered"] == 1
    assert [request.webhook_id for request in receiver.received] == [f"evt_{event_id}"] * 2
    assert (only_delivery().attempts, only_delivery().last_status) == (2, 200)


def test_410_disables_the_endpoint_and_fails_its_pending_deliveries(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    endpoint_id = new_endpoint(person, receiver.url())
    now = utcnow()
    emit(person, now=now)
    emit(person, now=now + timedelta(hours=1))  # pending, not due at `now`
    receiver.script(410)

    assert run_job_at(app, JOB, now)["failed"] == 1

    gone, later = deliveries()
    assert (gone.status, gone.attempts, gone.last_status, gone.next_attempt_at) == (
        "failed",
        1,
        410,
        None,
    )
    assert (later.status, later.attempts, later.next_attempt_at) == ("failed", 0, None)
    assert later.last_error == "The endpoint was disabled: it answered 410 Gone."
    endpoint = db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True)
    assert endpoint is not None
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "gone")
    # The service's disabling is audited as an owner's is, on the owner's account.
    assert audited(app, "webhook_endpoint_changed") == [
        (
            "webhook_endpoint_changed",
            "job",
            "deliver-webhooks:tests",
            {"endpoint_id": str(endpoint_id), "changed": "enabled", "disabled_reason": "gone"},
        )
    ]
    assert (
        scalar(
            app,
            select(AuditRecord.account_id).where(AuditRecord.action == "webhook_endpoint_changed"),
        )
        == person.account_id
    )
    emit(person, now=now)  # a disabled endpoint gets no new delivery
    assert len(deliveries()) == 2
    assert run_job_at(app, JOB, now + timedelta(days=1))["failed"] == 0
    assert len(receiver.received) == 1


@pytest.mark.postgres_only
def test_a_410_while_the_ledger_posts_the_endpoint_an_event_leaves_nothing_pending(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    """A ledger operation holds the account and adds a delivery to the endpoint while a run
    records the endpoint's 410: the run waits for it, and fails that delivery with the rest."""
    endpoint_id = new_endpoint(person, receiver.url())
    now = utcnow()
    emit(person, now=now)
    receiver.script(410)
    fanned_out, errors = threading.Event(), []

    def fan_out() -> None:
        with app.app_context():
            try:
                with write_transaction(db.session):
                    sql = LedgerSql(db.session)
                    sql.one(LOCK_ACCOUNT, account=person.account_id)
                    outbox.emit(
                        sql,
                        account_id=person.account_id,
                        event_type="balance.low",
                        data={"threshold": "9", "available": "0"},
                        now=now + timedelta(hours=1),
                    )
                    sql.one(LOCK_ACCOUNT, account=person.account_id)  # sends the fan-out now
                    fanned_out.set()
                    if not until(lambda: not job.is_alive() or waits_for_a_lock()):
                        errors.append("the run neither ended nor waited")
            finally:
                db.session.remove()

    job = threading.Thread(target=lambda: fanned_out.wait(10) and run_job_at(app, JOB, now))
    job.start()
    fan_out()
    job.join(30)
    assert not job.is_alive() and errors == []
    assert [(d.status, d.attempts) for d in deliveries()] == [("failed", 1), ("failed", 0)]
    endpoint = db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True)
    assert endpoint is not None and endpoint.disabled_reason == "gone"


def test_a_retry_asked_for_while_an_attempt_is_under_way_stands_when_it_fails(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    """The owner asks for a retry while a run posts the delivery: the run's failure is
    recorded, and the delivery stays due when the owner asked, not at the schedule's next."""
    new_endpoint(person, receiver.url())
    now = utcnow()
    emit(person, now=now)
    receiver.script(Answer(status=500, hang=True))
    summaries: list[dict[str, Any]] = []
    run = threading.Thread(target=lambda: summaries.append(run_job_at(app, JOB, now)))
    run.start()
    try:
        receiver.wait_for(lambda r: len(r.received) == 1)
        retried_at = utcnow()
        with write_transaction(db.session):
            delivery.retry(db.session, delivery_id=only_delivery().id, now=retried_at)
    finally:
        receiver.release()
        run.join(30)
    assert [summary["retrying"] for summary in summaries] == [1]
    found = only_delivery()
    assert (found.status, found.attempts, found.last_status) == ("pending", 1, 500)
    assert found.next_attempt_at == retried_at
    assert run_job_at(app, JOB, retried_at)["delivered"] == 1


@pytest.mark.postgres_only
def test_a_410_while_the_owner_disables_the_endpoint_waits_for_it_and_neither_fails(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    """Both stop the endpoint listening, and take its row and then its account's in that order:
    the run waits for the owner's change instead of a deadlock aborting one of them."""
    endpoint_id = new_endpoint(person, receiver.url())
    now = utcnow()
    emit(person, now=now)
    receiver.script(410)
    summaries: list[dict[str, Any]] = []
    run = threading.Thread(target=lambda: summaries.append(run_job_at(app, JOB, now)))
    with app.app_context():
        with write_transaction(db.session):
            managed = endpoints.get(
                db.session, endpoint_id=endpoint_id, user_id=person.id, for_change=True
            )
            run.start()
            assert until(lambda: not run.is_alive() or waits_for_a_lock())
            endpoints.change(
                db.session, managed.endpoint, enabled=False, context=TEST_CONTEXT, now=utcnow()
            )
        db.session.remove()
    run.join(30)
    assert [summary["failed"] for summary in summaries] == [1]
    assert [(d.status, d.last_status) for d in deliveries()] == [("failed", 410)]
    endpoint = db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True)
    assert endpoint is not None and not endpoint.enabled


def test_the_schedules_last_attempt_fails_and_a_manual_retry_sends_it_again(
    app: Flask, person: Person, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_SCHEDULE", (1, 1))
    new_endpoint(person, receiver.url())
    [event_id] = emit(person)
    receiver.script(500, 502, 503, 500, 200)
    start = utcnow()

    outcomes = [run_job_at(app, JOB, start + timedelta(seconds=n)) for n in range(4)]
    assert [(o["retrying"], o["failed"]) for o in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    row = only_delivery()
    assert (row.status, row.attempts, row.last_status, row.next_attempt_at) == (
        "failed",
        3,
        503,
        None,
    )
    assert row.last_error == "HTTP 503."

    later = start + timedelta(hours=1)
    with write_transaction(db.session):
        delivery.retry(db.session, delivery_id=row.id, now=later)
    assert only_delivery().next_attempt_at == later
    assert run_job_at(app, JOB, later)["failed"] == 1  # past the schedule: failed again at once
    assert (only_delivery().status, only_delivery().attempts) == ("failed", 4)
    with write_transaction(db.session):
        delivery.retry(db.session, delivery_id=row.id, now=later)
    assert run_job_at(app, JOB, later)["delivered"] == 1
    assert (only_delivery().status, only_delivery().attempts) == ("delivered", 5)
    with write_transaction(db.session):  # a delivered one stays delivered
        delivery.retry(db.session, delivery_id=row.id, now=later)
    assert only_delivery().status == "delivered"
    assert receiver.ids() == {f"evt_{event_id}": 5}
    assert receiver.failures == []


def test_two_runs_at_once_post_each_event_once(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    event_ids = emit(person, 30)
    # Slow enough answers that the two runs overlap while posting.
    receiver.default = Answer(delay=0.05)

    summaries = run_job_at_once(app, JOB, utcnow(), 2)

    assert sum(summary["delivered"] for summary in summaries) == 30
    assert sum(summary["lease_lost"] for summary in summaries) == 0
    assert receiver.ids() == {f"evt_{event_id}": 1 for event_id in event_ids}
    assert all(len(ids) == 1 for ids in receiver.ids_by_body().values())
    assert receiver.failures == []
    assert {(row.status, row.attempts) for row in deliveries()} == {("delivered", 1)}


def _python(script: str, *arguments: str) -> subprocess.Popen[str]:
    """A process of its own running the app (with the test app's environment)."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        cwd=ROOT,
        env={**os.environ, **LOOPBACK_WEBHOOKS},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


SPEND_THEN_DIE = """
import os, signal, sys
from datetime import UTC, datetime
from creditapp import create_app, ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
app = create_app()
with app.app_context():
    with write_transaction(db.session):
        ledger.adjust(db.session, account_id=int(sys.argv[1]), amount=-int(sys.argv[2]),
                      reason="then the process dies", now=datetime.now(UTC),
                      context=ledger.AuditContext(actor_type="system", actor_id="tests"))
    os.kill(os.getpid(), signal.SIGKILL)
"""

DELIVER = """
import sys
from datetime import datetime
from creditapp import create_app
from creditapp.extensions import db
from creditapp.jobs import run_job
app = create_app()
with app.app_context():
    run_job("deliver-webhooks", db.session, now=datetime.fromisoformat(sys.argv[1]),
            actor="tests", settings=app.config)
"""


@pytest.mark.real_clock
def test_an_event_committed_by_a_process_killed_at_once_is_delivered(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    with write_transaction(db.session):
        alerts.set_thresholds(
            db.session, account_id=person.account_id, amounts=[50 * CR], now=utcnow()
        )
    process = _python(SPEND_THEN_DIE, str(person.account_id), str(70 * CR))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, output

    assert run_job_at(app, JOB, utcnow())["delivered"] == 1
    [request] = receiver.received
    assert request.verified and request.payload["type"] == "balance.low"
    assert request.payload["data"]["available"] == "30"


@pytest.mark.real_clock
def test_a_run_killed_while_posting_is_delivered_after_its_lease_with_the_same_webhook_id(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    [event_id] = emit(person)
    receiver.script(Answer(hang=True))
    now = utcnow()
    process = _python(DELIVER, now.isoformat())
    try:
        receiver.wait_for(lambda r: len(r.received) == 1, seconds=60)
        process.kill()
        process.communicate(timeout=30)
    finally:
        stop(process)
        receiver.release()

    row = only_delivery()
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, row.created_at)
    # The lease runs from the claim: `now` plus the moments the run took to claim it.
    lease_ends = row.claimed_until
    assert lease_ends is not None
    assert now + LEASE <= lease_ends <= now + LEASE + timedelta(seconds=30)
    assert run_job_at(app, JOB, lease_ends - timedelta(seconds=1))["delivered"] == 0
    assert run_job_at(app, JOB, lease_ends)["delivered"] == 1
    assert receiver.ids() == {f"evt_{event_id}": 2}
    assert list(receiver.ids_by_body().values()) == [{f"evt_{event_id}"}]
    assert receiver.failures == []
    first, second = receiver.received
    assert first.body == second.body
    assert (only_delivery().status, only_delivery().attempts) == ("delivered", 1)


REFUSED = [
    "https://127.0.0.1/hooks",
    "https://127.8.9.10:8443/hooks",
    "https://[::1]/hooks",
    "https://[::ffff:127.0.0.1]/hooks",
    "https://10.0.0.1/hooks",
    "https://10.255.3.4/hooks",
    "https://192.168.1.1/hooks",
    "https://172.16.0.1/hooks",
    "https://100.64.0.1/hooks",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/hooks",
    "https://[fe80::1]/hooks",
    "https://0.0.0.0/hooks",
    "https://224.0.0.1/hooks",
    "https://localhost/hooks",
    "https://localhost.:8443/hooks",
    "https://2130706433/hooks",  # 127.0.0.1 as one number, resolved as such
    "http://8.8.8.8/hooks",
    "ftp://8.8.8.8/hooks",
    "https://user:password@8.8.8.8/hooks",
    "https:///hooks",
    "https://8.8.8.8:99999/hooks",
    "https://does-not-resolve.invalid/hooks",
    "https://8.8.8.8/" + "a" * 2048,
]


@pytest.mark.parametrize("url", REFUSED)
def test_urls_of_private_hosts_are_refused_in_production_mode(url: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        urls.checked(url, allow_private=False)
    assert refused.value.code == "webhook_url_refused"
    assert refused.value.details["url"] == url


def test_what_the_url_rules_let_through() -> None:
    urls.checked("https://8.8.8.8/hooks", allow_private=False)
    urls.checked("https://[2001:4860:4860::8888]:8443/hooks", allow_private=False)
    # Development and tests: plain http to loopback, but still only http(s) with a host.
    urls.checked("http://127.0.0.1:8000/hooks", allow_private=True)
    urls.checked("http://localhost/hooks", allow_private=True)
    for url in ("ftp://127.0.0.1/hooks", "http:///hooks"):
        with pytest.raises(WebhookUrlRefused):
            urls.checked(url, allow_private=True)
    with pytest.raises(WebhookUrlRefused) as unresolved:
        urls.checked("https://does-not-resolve.invalid/", allow_private=False)
    assert "does not resolve" in unresolved.value.message


def test_a_url_refused_at_delivery_time_is_not_posted_and_is_counted(
    app: Flask, person: Person, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_endpoint(person, receiver.url())  # saved while private addresses were allowed
    emit(person)
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    refused_before = attempts_counted("url_refused")

    now = utcnow()
    assert run_job_at(app, JOB, now)["url_refused"] == 1

    assert receiver.received == []
    row = only_delivery()
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error == "The webhook URL is refused: its scheme must be https."
    assert row.next_attempt_at == now + timedelta(seconds=5)  # retried as any failure
    assert attempts_counted("url_refused") == refused_before + 1


def test_a_loopback_address_is_refused_at_delivery_time_after_resolution(
    app: Flask, person: Person, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # https to a name that resolves to loopback: refused once resolved, never connected to.
    new_endpoint(person, f"https://localhost:{receiver.port}/hooks")
    emit(person)
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)

    assert run_job_at(app, JOB, utcnow())["url_refused"] == 1

    assert receiver.received == []
    assert "not a public address" in (only_delivery().last_error or "")


def test_a_redirect_is_not_followed(app: Flask, person: Person, receiver: WebhookReceiver) -> None:
    with WebhookReceiver(SECRET) as elsewhere:
        new_endpoint(person, receiver.url())
        emit(person)
        receiver.script(Answer(302, headers={"Location": elsewhere.url("/internal")}))

        assert run_job_at(app, JOB, utcnow())["retrying"] == 1

        assert len(receiver.received) == 1
        assert elsewhere.received == []
    row = only_delivery()
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 302)
    assert row.last_error == "HTTP 302: redirects are not followed."


def test_a_post_connects_to_the_checked_address_whatever_the_name_resolves_to(
    receiver: WebhookReceiver,
) -> None:
    # A name that resolves nowhere now (as a rebinding name might resolve elsewhere): the post
    # goes to the address checked, naming the URL's host.
    url = f"http://rebound.invalid:{receiver.port}/hooks"
    checked = urls.Destination(url, "http", "rebound.invalid", receiver.port, "127.0.0.1")
    with requests.Session() as http:
        http.trust_env = False
        http.mount("http://", delivery.PinnedAddress(checked, answer_within=10))
        answer = http.post(url, data=b"{}", headers={"Host": f"rebound.invalid:{receiver.port}"})
    assert answer.status_code == 200
    [request] = receiver.received
    assert request.headers["host"] == f"rebound.invalid:{receiver.port}"


def _certificate(directory: Path, host: str) -> Path:
    """A self-signed certificate for `host` (its own authority), with its key, in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "tls.crt").write_bytes(self_signed_certificate(key, host))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "tls.crt"


def test_https_to_the_checked_address_names_the_urls_host_and_checks_its_certificate(
    tmp_path: Path,
) -> None:
    certificate = _certificate(tmp_path, "hooks.example.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, tmp_path / "tls.key")
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)

    with WebhookReceiver(SECRET, tls=context) as receiver:

        def post_to(host: str) -> requests.Response:
            url = receiver.url(host=host)
            checked = urls.Destination(url, "https", host, receiver.port, "127.0.0.1")
            with requests.Session() as http:
                http.trust_env = False
                http.mount("https://", delivery.PinnedAddress(checked, answer_within=10))
                return http.post(
                    url,
                    data=b"{}",
                    headers={"Host": f"{host}:{receiver.port}"},
                    verify=str(certificate),
                    timeout=10,
                )

        assert post_to("hooks.example.test").status_code == 200
        assert server_names == ["hooks.example.test"]
        # Connected to the same address, but the certificate is not the URL's host's.
        with pytest.raises(requests.exceptions.SSLError):
            post_to("impostor.example.test")
        assert len(receiver.received) == 1


def test_deliveries_and_events_past_their_retention_are_purged(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    endpoint_id = new_endpoint(person, receiver.url())
    long_ago = utcnow() - timedelta(days=31)
    delivered_id, pending_id = emit(person, 2, now=long_ago)
    [recent_id] = emit(person)
    assert run_job_at(app, JOB, long_ago)["delivered"] == 2
    with write_transaction(db.session):  # one old delivery still pending (a retry pending)
        db.session.execute(
            WebhookDelivery.__table__.update()
            .where(WebhookDelivery.event_id == pending_id)
            .values(status="pending", next_attempt_at=utcnow() + timedelta(days=1))
        )

    summary = run_job_at(app, JOB, utcnow())

    assert (summary["purged_deliveries"], summary["purged_events"]) == (1, 1)
    assert summary["delivered"] == 1  # the recent one
    db.session.rollback()
    kept = set(db.session.scalars(select(WebhookEvent.id)))
    assert kept == {pending_id, recent_id}
    assert delivered_id not in kept
    assert (
        db.session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
        )
        == 2
    )


def test_a_webhook_id_is_never_given_again_after_the_purge(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    """Receivers drop a `webhook-id` they have seen: once the purge emptied the tables, SQLite
    gave the next event the first one's id again, and its receiver dropped it as a duplicate."""
    new_endpoint(person, receiver.url())
    long_ago = utcnow() - timedelta(days=31)
    [first] = emit(person, now=long_ago)
    run_job_at(app, JOB, long_ago)
    summary = run_job_at(app, JOB, utcnow())
    assert (summary["purged_deliveries"], summary["purged_events"]) == (1, 1)
    [then] = emit(person)
    run_job_at(app, JOB, utcnow())
    assert then > first
    assert [post.headers["webhook-id"] for post in receiver.received] == [
        f"evt_{first}",
        f"evt_{then}",
    ]
    db.session.rollback()
    delivery_ids = db.session.scalars(select(WebhookDelivery.id)).all()
    assert len(delivery_ids) == 1 and delivery_ids[0] > 1


def test_the_deliveries_waiting_the_oldest_event_and_the_longest_due_are_measured_when_scraped(
    app: Flask,
    client: FlaskClient,
    person: Person,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def gauge(name: str) -> float:
        body = client.get("/metrics").get_data(as_text=True)
        [family] = [
            family for family in text_string_to_metric_families(body) if family.name == name
        ]
        return float(family.samples[0].value)

    def undelivered() -> float:
        return gauge("creditapp_webhook_oldest_undelivered_seconds")

    def overdue() -> float:
        return gauge("creditapp_webhook_overdue_seconds")

    def pending() -> float:
        return gauge("creditapp_webhook_pending_deliveries")

    assert (pending(), undelivered(), overdue()) == (0, 0, 0)
    new_endpoint(person, receiver.url())
    emit(person, now=utcnow() - timedelta(hours=2))
    assert pending() == 1
    assert 7200 <= undelivered() < 7200 + 60
    assert 7200 <= overdue() < 7200 + 60
    # The endpoint fails it: undelivered still, but not due before its retry, an hour on (a
    # receiver that keeps failing is its owner's to see, not the job falling behind).
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_SCHEDULE", (3600,))
    receiver.script(500)
    assert run_job_at(app, JOB, utcnow())["retrying"] == 1
    assert pending() == 1
    assert 7200 <= undelivered() < 7200 + 60
    assert overdue() == 0
    assert run_job_at(app, JOB, utcnow() + timedelta(hours=1))["delivered"] == 1
    assert (pending(), undelivered(), overdue()) == (0, 0, 0)
    # An endpoint with a post under way: its other deliveries wait for that post (one an
    # endpoint at a time), not for the job, and are not overdue.
    emit(person, 2, now=utcnow() - timedelta(hours=2))
    posted = min(row.id for row in deliveries() if row.status == "pending")
    with write_transaction(db.session):
        db.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == posted)
            .values(claimed_until=utcnow() + timedelta(minutes=1))
        )
    assert (pending(), overdue()) == (2, 0)


class TricklingReceiver:
    """A receiver that answers a byte at a time, each within the read timeout, for as long as
    the connection stays open: only a deadline on the whole answer ends its post."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection, suppress(OSError):
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 100:
                if self._stop.wait(0.3):
                    return
                connection.sendall(bytes([byte]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


def test_a_receiver_that_trickles_its_answer_is_cut_off_and_holds_back_no_other(
    app: Flask, person: Person, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "WEBHOOK_TIMEOUT_SECONDS", 1)
    trickling = TricklingReceiver()
    try:
        slow = new_endpoint(person, f"http://127.0.0.1:{trickling.port}/hooks")
        fast = new_endpoint(person, receiver.url())
        emit(person)
        started = time.monotonic()
        summary = run_job_at(app, JOB, utcnow())
        took = time.monotonic() - started
    finally:
        trickling.close()
    # Connected at once, cut off a second later (a busy machine may add some).
    assert took < 10
    assert (summary["delivered"], summary["retrying"], summary["lease_lost"]) == (1, 1, 0)
    by_endpoint = {row.endpoint_id: row for row in deliveries()}
    assert (by_endpoint[fast].status, by_endpoint[fast].attempts) == ("delivered", 1)
    cut = by_endpoint[slow]
    assert (cut.status, cut.attempts, cut.last_status) == ("pending", 1, None)
    assert cut.last_error is not None and cut.claimed_until is None
    assert trickling.connections == 1


def test_a_receiver_that_hangs_holds_one_post_and_no_other_accounts_deliveries(
    app: Flask, person: Person, person_factory: Any, receiver: WebhookReceiver
) -> None:
    """A run posts ten at once, each slot taking the next due delivery as it frees, one post an
    endpoint at a time: twelve events due first for an endpoint that never answers held every
    slot for the timeout (and the next round as long), and another account's event waited."""
    other: Person = person_factory(credits=100 * CR)
    with WebhookReceiver(SECRET, default=Answer(hang=True)) as hanging:
        new_endpoint(person, hanging.url())
        new_endpoint(other, receiver.url())
        emit(person, 12, now=utcnow() - timedelta(minutes=1))
        [awaited] = emit(other)
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(run_job_at, app, JOB, utcnow())
            # Within the hung post's timeout (10 s): a busy machine has room.
            receiver.wait_for(lambda r: len(r.received) == 1, seconds=8)
            assert len(hanging.received) == 1  # one post to that endpoint under way
            hanging.release()
            summary = running.result(timeout=60)
    assert [post.webhook_id for post in receiver.received] == [f"evt_{awaited}"]
    assert summary["delivered"] == 13 and len(hanging.received) == 12


def test_a_manual_retry_never_posts_a_delivery_another_run_is_posting(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    new_endpoint(person, receiver.url())
    emit(person)
    receiver.script(Answer(hang=True))
    now = utcnow()
    with ThreadPoolExecutor(max_workers=1) as pool:
        posting = pool.submit(run_job_at, app, JOB, now)
        receiver.wait_for(lambda r: len(r.received) == 1, seconds=30)
        with app.app_context():
            with write_transaction(db.session):
                delivery.retry(db.session, delivery_id=only_delivery().id, now=now)
            db.session.remove()
        # Due again, but leased: a second run leaves it to the first.
        assert run_job_at(app, JOB, now)["delivered"] == 0
        assert len(receiver.received) == 1
        receiver.release()
        assert posting.result(timeout=60)["delivered"] == 1
    assert list(receiver.ids().values()) == [1]
    assert (only_delivery().status, only_delivery().attempts) == ("delivered", 1)


def test_a_pending_delivery_of_an_endpoint_disabled_meanwhile_fails_at_the_next_run(
    app: Flask, person: Person, receiver: WebhookReceiver
) -> None:
    endpoint_id = new_endpoint(person, receiver.url())
    emit(person)
    # As if the event fanned out while its endpoint was being disabled.
    with write_transaction(db.session):
        db.session.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(enabled=False)
        )
    summary = run_job_at(app, JOB, utcnow())
    assert (summary["disabled"], summary["delivered"]) == (1, 0)
    row = only_delivery()
    assert (row.status, row.next_attempt_at) == ("failed", None)
    assert row.last_error == "The endpoint was disabled or deleted."
    assert receiver.received == []
