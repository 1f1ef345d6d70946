"""The `purge-idempotency` job: keys past their 24 h retention go, with the responses they
stored; newer keys and requests still in progress stay, and no request waits on the job."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert, select, text

from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.idempotency import IdempotencyKey
from tests.conftest import utcnow

RETENTION = timedelta(hours=24)


def _keys(app: Flask, now: datetime, *specs: tuple[str, str, timedelta]) -> None:
    """Keys named `key`, in `status`, claimed `age` before `now`."""
    rows = [
        {
            "scope": "user:1",
            "key": key,
            "fingerprint": "f" * 64,
            "status": status,
            "claim_token": "t" * 32,
            "response_status": 201 if status == "completed" else None,
            "response_body": b"{}" if status == "completed" else None,
            "response_content_type": "application/json" if status == "completed" else None,
            "claimed_at": now - age,
            "expires_at": now - age + RETENTION,
        }
        for key, status, age in specs
    ]
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(insert(IdempotencyKey), rows)
        db.session.remove()


def _remaining(app: Flask) -> set[str]:
    with app.app_context():
        keys = set(db.session.scalars(select(IdempotencyKey.key)))
        db.session.remove()
    return keys


def _purge(app: Flask, now: datetime) -> dict[str, Any]:
    result = app.test_cli_runner().invoke(
        args=["jobs", "run", "purge-idempotency", "--now", now.isoformat()]
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_keys_past_their_retention_are_purged_in_batches(app: Flask) -> None:
    now = utcnow()
    _keys(
        app,
        now,
        ("old-done", "completed", timedelta(hours=25)),
        ("just-expired", "completed", RETENTION),
        ("recent-done", "completed", timedelta(hours=23)),
        ("running", "in_progress", timedelta(minutes=1)),
        ("abandoned", "in_progress", timedelta(hours=30)),
    )
    # More than one batch of expired keys.
    _keys(app, now, *((f"bulk-{n}", "completed", timedelta(days=3)) for n in range(2500)))

    assert _purge(app, now)["purged"] == 2503
    assert _remaining(app) == {"recent-done", "running"}
    assert _purge(app, now)["purged"] == 0


@pytest.mark.postgres_only
def test_the_purge_skips_a_key_a_request_holds_instead_of_waiting(app: Flask) -> None:
    now = utcnow()
    _keys(app, now, ("busy", "completed", timedelta(days=2)), ("idle", "completed", RETENTION))
    locked = threading.Event()
    release = threading.Event()

    def hold_the_key() -> None:  # as a request re-claiming the expired key would
        with app.app_context():
            with write_transaction(db.session):
                db.session.execute(
                    text("SELECT id FROM idempotency_keys WHERE key = 'busy' FOR UPDATE")
                )
                locked.set()
                release.wait(timeout=30)
            db.session.remove()

    holder = threading.Thread(target=hold_the_key)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        started = time.monotonic()
        assert _purge(app, now)["purged"] == 1
        assert time.monotonic() - started < 5
        assert _remaining(app) == {"busy"}
    finally:
        release.set()
        holder.join(timeout=30)
    assert _purge(app, now)["purged"] == 1
    assert _remaining(app) == set()
