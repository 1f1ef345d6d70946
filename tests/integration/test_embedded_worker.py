"""The embedded default's Celery: a worker on the file-system broker (no server) runs a job that
another process enqueued, against the service's database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from creditapp import ledger
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import Hold
from tests.conftest import TEST_CONTEXT, utcnow
from tests.helpers import scalar
from tests.integration.live_server import ROOT, celery_process

pytestmark = pytest.mark.real_clock


def _embedded_env(app: Flask) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)  # no server: the file-system broker under instance/
    return env


def test_a_file_system_worker_runs_a_job_enqueued_by_another_process(
    app: Flask, person_factory: Any
) -> None:
    person = person_factory(credits=5_000_000)
    with app.app_context():
        with write_transaction(db.session):
            held = ledger.hold(
                db.session,
                account_id=person.account_id,
                amount=1_000_000,
                ttl=timedelta(minutes=10),
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    later = (utcnow() + timedelta(hours=1)).isoformat()
    env = _embedded_env(app)
    enqueue = (
        "import celery_worker; "
        "assert celery_worker.celery.conf.broker_url == 'filesystem://'; "
        "from tasks.jobs import run; "
        f"run.delay('expire-holds', '{later}')"
    )
    subprocess.run([sys.executable, "-c", enqueue], cwd=ROOT, env=env, check=True, timeout=60)
    arguments = ("worker", "--pool", "solo", "--loglevel", "WARNING", "--without-mingle")
    with celery_process(*arguments, env=env):
        deadline = time.monotonic() + 60
        status = select(Hold.status).where(Hold.id == held.hold_id)
        while scalar(app, status) != "expired":
            assert time.monotonic() < deadline, "the worker did not run the job"
            time.sleep(0.1)
    with app.app_context():
        assert ledger.balance(db.session, account_id=person.account_id, now=utcnow()).reserved == 0
        db.session.remove()
