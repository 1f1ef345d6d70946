"""Real Celery processes against Redis and PostgreSQL: a worker enqueued through the admin
endpoint and killed with SIGKILL half way through a job; two beats, of which one schedules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from creditapp import ledger
from creditapp.auth.models import User
from creditapp.config import JOB_PERIODS
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import Grant
from tasks.jobs import job_lock_key, run
from tests.conftest import Person, utcnow
from tests.fake_providers import FakeProviders
from tests.helpers import charged_messages, owe
from tests.integration.live_server import STOP_SECONDS, celery_process
from tests.integration.tcp_proxy import TcpProxy

CREDIT = 1_000_000

pytestmark = [pytest.mark.postgres_only, pytest.mark.real_clock]

VISIBILITY_SECONDS = 2


@pytest.fixture(autouse=True)
def empty_queue(app: Flask) -> Iterator[None]:
    """No task another test enqueued (and no worker ran) reaches this test's worker, and
    nothing this test's beats sent reaches a later one."""
    broker = redis.Redis.from_url(app.config["REDIS_URL"])

    def empty() -> None:
        broker.delete("celery", "unacked", "unacked_index", *broker.keys("redbeat*"))

    empty()
    yield
    empty()


@contextmanager
def worker(app: Flask, output: Any = subprocess.DEVNULL) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_SECONDS),
        "DATABASE_POOL_SIZE": "4",
    }
    arguments = ("worker", "--concurrency", "1", "--loglevel", "WARNING")
    with celery_process(
        *arguments, "--without-mingle", "--without-gossip", env=env, output=output
    ) as process:
        yield process


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_the_admin_endpoint_enqueues_and_a_worker_pays(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    admin: Person,
    fake_providers: FakeProviders,
    tmp_path: Path,
) -> None:
    person = person_factory(credits=10 * CREDIT)
    charged_messages(app, client, person, fake_providers, 3)
    owe(app, 3)
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "9.4"

    logged = tmp_path / "worker.log"
    with logged.open("wb") as output, worker(app, output):
        response = client.post("/api/admin/credit/process-compensations", headers=admin.headers)
        assert response.status_code == 202 and response.get_json()["pending"] == 3

        def completed() -> bool:
            listed = client.get(
                "/api/admin/credit/compensations?status=completed", headers=admin.headers
            )
            return len(listed.get_json()["items"]) == 3

        wait_for(completed)
        wait_for(lambda: b'"job_run"' in logged.read_bytes())
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "10"
    # The worker's log lines are JSON, at their own level, as the web's are.
    [run] = [json.loads(line) for line in logged.read_text().splitlines() if '"job_run"' in line]
    assert (run["job"], run["outcome"], run["level"]) == ("compensations", "success", "info")


def _many_users(app: Flask, count: int) -> None:
    """`count` users of the free tier, created in bulk (the refresh job is what is tested)."""
    with app.app_context(), write_transaction(db.session) as session:
        session.execute(
            text("""
            INSERT INTO users (email, role, tier_name, period_anchor, created_at)
            SELECT 'bulk' || n || '@example.com', 'user', 'free', now(), now()
            FROM generate_series(1, :count) AS n"""),
            {"count": count},
        )
        session.execute(
            text("""
            INSERT INTO accounts (user_id, balance, reserved, last_seq, created_at)
            SELECT id, 0, 0, NULL, now() FROM users WHERE email LIKE 'bulk%'""")
        )


def test_a_worker_killed_half_way_through_refresh_leaves_nothing_lost_or_doubled(
    app: Flask,
) -> None:
    users = 600
    _many_users(app, users)
    later = utcnow() + timedelta(days=40)

    def granted() -> int:
        with app.app_context():
            count = db.session.scalar(
                select(func.count()).select_from(Grant).where(Grant.source == "subscription")
            )
            db.session.remove()
        return int(count or 0)

    with worker(app) as first:
        app.extensions["celery"].send_task(run.name, args=("refresh", later.isoformat()))
        wait_for(lambda: granted() >= 50)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    at_kill = granted()
    assert 0 < at_kill < users, "the job must be killed half way"

    # The task was acknowledged late: once its visibility timeout passes, a new worker runs it
    # again from the start, and users refreshed before the kill are not refreshed twice.
    time.sleep(VISIBILITY_SECONDS + 1)
    with worker(app):
        wait_for(lambda: granted() == users, seconds=90)
        time.sleep(1)
    assert granted() == users
    with app.app_context():
        per_user = db.session.execute(
            select(Grant.account_id, func.count())
            .where(Grant.source == "subscription")
            .group_by(Grant.account_id)
            .having(func.count() > 1)
        ).all()
        assert per_user == []
        assert ledger.reconcile(db.session) == []
        assert db.session.scalar(select(func.count()).select_from(User)) == users
        db.session.remove()


def test_a_run_of_a_job_already_under_way_ends_at_once(app: Flask) -> None:
    """Runs of one job never overlap: the second ends without doing anything (a job slower
    than its period takes one worker, not all), and the job runs again once the first ended."""
    _many_users(app, 5)
    later = (utcnow() + timedelta(days=40)).isoformat()
    celery = app.extensions["celery"]
    with app.app_context(), db.engine.connect() as holder:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        key = {"key": job_lock_key("refresh")}
        holder.scalar(text("SELECT pg_advisory_lock(:key)"), key)  # a run under way elsewhere
        with worker(app):
            skipped = celery.send_task(run.name, args=("refresh", later))
            assert skipped.get(timeout=60) == {"skipped": "another run of this job is under way"}
            holder.scalar(text("SELECT pg_advisory_unlock(:key)"), key)
            ran = celery.send_task(run.name, args=("refresh", later))
            assert ran.get(timeout=60) == {"checked": 5, "granted": 5}
        db.session.remove()


@contextmanager
def beat(app: Flask, log: Path, redis_url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A `celery beat` with redbeat on the test's Redis (or at `redis_url`), every job due each
    second."""
    periods = {f"JOB_PERIOD_{job.upper().replace('-', '_')}_SECONDS": "1" for job in JOB_PERIODS}
    redis_url = redis_url or app.config["REDIS_URL"]
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "BEAT_MAX_LOOP_SECONDS": "1",  # the lock times out after 5 s
        **periods,
    }
    with (
        log.open("wb") as output,
        celery_process("beat", "-l", "INFO", env=env, output=output) as process,
    ):
        yield process


def _sent(log: Path) -> int:
    return log.read_text(errors="replace").count("Sending due task")


def test_of_two_beats_one_schedules_and_the_other_takes_over_when_it_dies(
    app: Flask, tmp_path: Path
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with beat(app, first_log) as first:
        wait_for(lambda: _sent(first_log) > 0, seconds=30)
        with beat(app, second_log):
            time.sleep(4)
            # Every job was due every second, yet only the lock's holder sent any.
            assert _sent(first_log) >= 2 * len(JOB_PERIODS)
            assert _sent(second_log) == 0
            # The holder dies without releasing its lock; the lock times out (5 loops).
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=STOP_SECONDS)
            wait_for(lambda: _sent(second_log) > 0, seconds=30)


def test_a_beat_rides_out_redis_hanging_and_going_away(app: Flask, tmp_path: Path) -> None:
    """Redis stops answering, then refuses connections and comes back empty (restarted without
    its data), each for longer than the beat's lock lives: the beat stays up, and queues every
    job again once Redis is back."""
    log = tmp_path / "beat.log"
    broker = redis.Redis.from_url(app.config["REDIS_URL"])
    proxy = TcpProxy.in_front_of(app.config["REDIS_URL"])
    try:
        with beat(app, log, redis_url=proxy.url) as process:
            wait_for(lambda: broker.llen("celery") > 0, seconds=30)
            for outage in (proxy.hang, proxy.cut):
                outage()
                time.sleep(7)  # the lock (5 s) lapses
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                if outage == proxy.cut:
                    broker.flushdb()
                queued = broker.llen("celery")
                proxy.restore()
                # Every job is due every second: each is queued again.
                wait_for(lambda: broker.llen("celery") >= queued + len(JOB_PERIODS), seconds=30)  # noqa: B023
            assert process.poll() is None
    finally:
        proxy.close()
