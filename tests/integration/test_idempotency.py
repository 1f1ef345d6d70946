"""Idempotency-Key (contract section 4): once per user and key, replayed byte for byte."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from creditapp import idempotency
from creditapp.database import write_transaction
from creditapp.errors import IdempotencyKeyReused, RequestInProgress
from creditapp.extensions import db
from tests.conftest import utcnow
from tests.helpers import ADJUST, GRANT, assert_error, ledger_rows, until, waits_for_a_lock
from tests.integration.live_server import call, live_server

DAY = timedelta(hours=24)


def keyed(person, key: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {**person.headers, "Idempotency-Key": key}


def test_a_repeat_is_replayed_byte_for_byte_and_runs_once(
    app: Flask, client: FlaskClient, admin, person_factory
) -> None:
    user = person_factory()
    body = {"user_id": str(user.id), "amount": "2", "reason": "x"}
    first = client.post(GRANT, headers=keyed(admin, "grant-1"), json=body)
    second = client.post(GRANT, headers=keyed(admin, "grant-1"), json=body)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.get_data() == first.get_data()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert ledger_rows(app) == [("grant", 2_000_000, 2_000_000)]


def test_the_same_key_for_another_request_is_a_conflict(
    app: Flask, client: FlaskClient, admin, person_factory
) -> None:
    user = person_factory()
    body = {"user_id": str(user.id), "amount": "2", "reason": "x"}
    client.post(GRANT, headers=keyed(admin, "k"), json=body)
    changed = client.post(GRANT, headers=keyed(admin, "k"), json={**body, "amount": "3"})
    assert_error(changed, 409, "idempotency_key_reused")
    elsewhere = client.post(ADJUST, headers=keyed(admin, "k"), json=body)
    assert_error(elsewhere, 409, "idempotency_key_reused")
    assert ledger_rows(app) == [("grant", 2_000_000, 2_000_000)]


def test_a_failed_request_frees_its_key(
    app: Flask, client: FlaskClient, admin, person_factory
) -> None:
    user = person_factory()
    take = {"user_id": str(user.id), "amount": "-5", "reason": "x"}
    assert_error(
        client.post(ADJUST, headers=keyed(admin, "take-5"), json=take),
        409,
        "balance_would_go_negative",
    )
    client.post(
        GRANT, headers=admin.headers, json={"user_id": str(user.id), "amount": "5", "reason": "x"}
    )
    retried = client.post(ADJUST, headers=keyed(admin, "take-5"), json=take)
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert ledger_rows(app)[-1] == ("adjust", -5_000_000, 0)


def test_keys_belong_to_one_user(app: Flask, client: FlaskClient, admin, person_factory) -> None:
    other_admin = person_factory("second-admin@example.com", role="admin")
    user = person_factory()
    body = {"user_id": str(user.id), "amount": "1", "reason": "x"}
    assert client.post(GRANT, headers=keyed(admin, "same"), json=body).status_code == 201
    second = client.post(GRANT, headers=keyed(other_admin, "same"), json=body)
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert len(ledger_rows(app)) == 2


@pytest.mark.parametrize("key", ["x" * 256, "tab\there", "é", ""])
def test_malformed_keys_are_refused(client: FlaskClient, admin, key: str) -> None:
    response = client.post(GRANT, headers=keyed(admin, key), json={})
    assert set(assert_error(response, 400, "validation_error")["details"]) == {"Idempotency-Key"}


def test_a_request_still_running_is_a_conflict(
    app: Flask, client: FlaskClient, admin, person_factory
) -> None:
    user = person_factory()
    body = b'{"user_id": "%d", "amount": "1", "reason": "x"}' % user.id
    with app.app_context():
        # The first request has claimed the key and is still working.
        idempotency.claim(
            db.session,
            idempotency.Asked(
                scope=f"user:{admin.id}",
                key="busy",
                fingerprint=idempotency.fingerprint("POST", f"{GRANT}?", body),
                now=utcnow(),
                retention=DAY,
                takeover_after=timedelta(minutes=10),
            ),
        )
        db.session.remove()
    response = client.post(
        GRANT, headers=keyed(admin, "busy"), data=body, content_type="application/json"
    )
    assert_error(response, 409, "request_in_progress")
    assert ledger_rows(app) == []


def test_claims_expire_and_abandoned_ones_are_taken_over(ctx) -> None:
    t0 = utcnow()

    def asked(fingerprint: str, now: datetime) -> idempotency.Asked:
        return idempotency.Asked("user:1", "k", fingerprint, now, DAY, timedelta(minutes=10))

    first = idempotency.claim(db.session, asked("a", t0))
    assert isinstance(first, idempotency.Claim)
    with pytest.raises(RequestInProgress):
        idempotency.claim(db.session, asked("a", t0 + timedelta(minutes=9)))
    with pytest.raises(IdempotencyKeyReused):
        idempotency.claim(db.session, asked("b", t0))
    takeover = idempotency.claim(db.session, asked("a", t0 + timedelta(minutes=10)))
    assert isinstance(takeover, idempotency.Claim) and takeover.token != first.token
    # The abandoned request comes back: it may not complete, so its work rolls back.
    with pytest.raises(RequestInProgress):
        idempotency.complete(
            db.session, first, response=idempotency.StoredResponse(201, b"{}", "x")
        )
    db.session.rollback()
    completed = idempotency.StoredResponse(
        201, b'{"ok": 1}', "application/json", (("X-Credits-Charged", "0.5"),)
    )
    idempotency.complete(db.session, takeover, response=completed)
    db.session.commit()
    replay = idempotency.claim(db.session, asked("a", t0 + DAY - timedelta(1)))
    assert replay == completed  # with the headers it was stored with
    # After 24 hours the key is forgotten: another request may use it.
    fresh = idempotency.claim(db.session, asked("b", t0 + DAY))
    assert isinstance(fresh, idempotency.Claim)


@pytest.mark.postgres_only
def test_the_same_key_sent_concurrently_runs_once(app: Flask, admin, person_factory) -> None:
    user = person_factory()
    body = {"user_id": str(user.id), "amount": "1", "reason": "x"}
    barrier = threading.Barrier(12)

    def send() -> tuple[int, str | None, str]:
        client = app.test_client()
        barrier.wait(timeout=30)
        response = client.post(GRANT, headers=keyed(admin, "race"), json=body)
        code = response.get_json().get("error", {}).get("code") if response.is_json else None
        return response.status_code, code, response.headers.get("Idempotent-Replayed", "no")

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: send(), range(12)))
    ran = [r for r in results if r == (201, None, "no")]
    assert len(ran) == 1
    assert all(
        r in ((201, None, "true"), (409, "request_in_progress", "no"))
        for r in results
        if r not in ran
    )
    assert ledger_rows(app) == [("grant", 1_000_000, 1_000_000)]


@pytest.mark.postgres_only
@pytest.mark.real_clock
def test_a_request_whose_worker_died_leaves_its_key_free(app: Flask, admin, person_factory) -> None:
    """A worker killed while an admin's grant runs (here, waiting for a row someone holds):
    its key was claimed in the grant's own transaction, which died with it, so the retry runs
    at once, and once (a claim committed first answered 409 for the takeover time, 10 minutes,
    though nothing had run)."""
    user = person_factory()
    body = json.dumps({"user_id": str(user.id), "amount": "1", "reason": "x"}).encode()
    key = {"Idempotency-Key": "worker-died"}
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "DATABASE_LOCK_TIMEOUT_SECONDS": "30",
    }
    with live_server(env, threads=2) as base:
        with app.app_context(), db.engine.connect() as holder:
            holder.execute(
                text("SELECT id FROM accounts WHERE user_id = :user FOR UPDATE"),
                {"user": user.id},
            )
            with ThreadPoolExecutor(max_workers=1) as pool:
                sending = pool.submit(call, "POST", f"{base}{GRANT}", admin.token, body, key)
                assert until(waits_for_a_lock), "the grant never reached the account's row"
                worker = int(
                    Path(f"/proc/{base.pid}/task/{base.pid}/children").read_text().split()[0]
                )
                os.kill(worker, signal.SIGKILL)
                with pytest.raises((OSError, http.client.HTTPException)):
                    sending.result(timeout=30)
            holder.rollback()
        deadline = time.monotonic() + 30
        while True:  # gunicorn's master starts another worker
            with suppress(OSError, http.client.HTTPException):
                status, headers, answer = call("POST", f"{base}{GRANT}", admin.token, body, key)
                if status != 503:
                    break
            assert time.monotonic() < deadline, "no worker came back"
            time.sleep(0.25)
        assert status == 201, answer
        assert "Idempotent-Replayed" not in headers
    assert ledger_rows(app) == [("grant", 1_000_000, 1_000_000)]


@pytest.mark.postgres_only
def test_a_key_claimed_in_a_transaction_still_running_is_in_progress_past_the_lock_timeout(
    app: Flask,
) -> None:
    """A request that claims its key in its one transaction holds the key's row until it
    commits: a twin that waits past the lock timeout is told the first is in progress (409),
    not that the database is down (503)."""
    asked = idempotency.Asked("user:1", "slow", "a", utcnow(), DAY, timedelta(minutes=10))
    with app.app_context():
        first = db.session
        with write_transaction(first):
            idempotency.Asking(asked).take(first)
            twin_error: list[BaseException] = []

            def twin() -> None:
                with app.app_context():
                    try:
                        with write_transaction(db.session):
                            db.session.execute(text("SET LOCAL lock_timeout = '300ms'"))
                            idempotency.Asking(asked).take(db.session)
                    except BaseException as error:
                        twin_error.append(error)
                    finally:
                        db.session.remove()

            waiting = threading.Thread(target=twin)
            waiting.start()
            waiting.join(timeout=30)
        db.session.remove()
    assert [type(error) for error in twin_error] == [RequestInProgress]
