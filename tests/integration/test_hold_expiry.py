"""Hold expiry: holds past their TTL are voided once, including a hold a killed web worker left."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from tests.conftest import BACKEND, TEST_CONTEXT, Person, utcnow
from tests.fake_providers import FakeProviders
from tests.helpers import (
    add_price,
    assert_consistent,
    run_job_at,
    run_job_at_once,
    scalar,
    start_conversation,
)
from tests.integration.live_server import call, live_server

CREDIT = 1_000_000


def _open_holds(app: Flask, person: Person, count: int) -> None:
    with app.app_context():
        for _ in range(count):
            with write_transaction(db.session):
                ledger.hold(
                    db.session,
                    account_id=person.account_id,
                    amount=CREDIT,
                    ttl=timedelta(minutes=10),
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
        db.session.remove()


def test_expired_holds_are_voided_once(app: Flask, person_factory: Any) -> None:
    person = person_factory(credits=10 * CREDIT)
    _open_holds(app, person, 5)
    assert run_job_at(app, "expire-holds", utcnow())["expired"] == 0
    later = utcnow() + timedelta(minutes=11)
    results = (
        run_job_at_once(app, "expire-holds", later, 2)
        if BACKEND == "postgresql"
        else [run_job_at(app, "expire-holds", later), run_job_at(app, "expire-holds", later)]
    )
    assert sum(result["expired"] for result in results) == 5
    assert scalar(app, select(func.count()).select_from(Hold).where(Hold.status == "expired")) == 5
    with app.app_context():
        assert ledger.balance(db.session, account_id=person.account_id, now=later).reserved == 0
        db.session.remove()
    assert_consistent(app)


@pytest.mark.real_clock
def test_a_hold_left_by_a_killed_web_worker_is_expired(
    app: Flask, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=10 * CREDIT)
    add_price(app, "openai", "gpt-jobs", input="1", output="2")
    conversation = start_conversation(app.test_client(), person, "openai", "gpt-jobs")
    fake_providers.delay = 30  # the provider is still answering when the worker dies
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "PROVIDER_TIMEOUT_SECONDS": "60"}
    pending = select(func.count()).select_from(Hold).where(Hold.status == "pending")
    with live_server(env) as base:
        dropped: list[BaseException] = []

        def send_and_lose_the_connection() -> None:
            try:
                call(
                    "POST",
                    f"{base}/api/conversations/{conversation}/messages",
                    person.token,
                    b'{"content": "Hello there"}',
                    headers={"Idempotency-Key": "doomed"},
                )
            except OSError as error:  # the worker died with the request
                dropped.append(error)

        sender = threading.Thread(target=send_and_lose_the_connection, daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while scalar(app, pending) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = subprocess.run(
            ["pgrep", "-P", str(base.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        sender.join(timeout=30)
    assert len(dropped) == 1
    fake_providers.delay = 0
    with app.app_context():
        assert ledger.balance(db.session, account_id=person.account_id, now=utcnow()).reserved > 0
        db.session.remove()

    ttl = timedelta(seconds=app.config["HOLD_TTL_SECONDS"])
    assert run_job_at(app, "expire-holds", utcnow() + ttl + timedelta(seconds=1)) == {"expired": 1}
    assert scalar(app, pending) == 0
    balance = app.test_client().get("/api/credit/balance", headers=person.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("10", "0")
    assert_consistent(app)
