"""The Celery side of the jobs: one task runs any job by name, beat's schedule maps the jobs'
periods onto it, and `enqueue` queues a job an HTTP request asks for.

Every job is idempotent, so the task is acknowledged late and put back when a worker dies: a
task a killed worker held runs again on another. Runs of one job never overlap: a run that
finds another under way ends at once, so that a job slower than its period (webhooks to slow
receivers) takes one worker, not every worker, and a run beat could not start within its
period is dropped (the next one comes).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import kombu.exceptions
import structlog
from celery import shared_task
from flask import current_app
from sqlalchemy import text

from creditapp.errors import DependencyUnavailable
from creditapp.extensions import db
from creditapp.jobs import run_job

log = structlog.get_logger(__name__)


@shared_task(name="creditapp.run_job", acks_late=True, reject_on_worker_lost=True)
def run(name: str, now: str | None = None) -> dict[str, Any]:
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    try:
        with _alone(name) as alone:
            if not alone:
                log.info("job_run", job=name, outcome="skipped", actor="celery")
                return {"skipped": "another run of this job is under way"}
            return run_job(
                name, db.session, now=moment, actor="celery", settings=current_app.config
            )
    finally:
        db.session.remove()


@contextmanager
def _alone(name: str) -> Iterator[bool]:
    """Whether this run is the job's only one under way: a PostgreSQL session lock held on a
    connection of its own (outside any transaction) for the run, which the server lets go of
    when the worker dies. The embedded default runs one worker, and needs none."""
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    key_of = {"key": job_lock_key(name)}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key_of):
            yield False
            return
        try:
            yield True
        finally:
            try:
                released = connection.scalar(text("SELECT pg_advisory_unlock(:key)"), key_of)
            except Exception:
                released = False
            if not released:
                # A connection whose lock may still be held never goes back to the pool:
                # closing it lets go of the lock (unless a pooler in transaction mode sent the
                # unlock to another server connection: docs/deploy.md, "PgBouncer").
                connection.invalidate()
                log.error("job_lock_not_released", job=name)


def job_lock_key(name: str) -> int:
    """The job's PostgreSQL advisory lock (a number every process computes alike)."""
    return zlib.crc32(f"creditapp.run_job:{name}".encode())


def beat_schedule(job_periods: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Every job at its period in seconds (`JOB_PERIODS` in the settings); a run not started
    within its period expires, so that beat's runs never pile up behind stopped workers."""
    return {
        f"job:{name}": {
            "task": run.name,
            "schedule": timedelta(seconds=seconds),
            "args": (name,),
            "options": {"expires": seconds},
        }
        for name, seconds in job_periods.items()
    }


def enqueue(job: str) -> str:
    """Queue `job` now, inside the caller's transaction, and return its task id; a broker that
    cannot be reached within a second or two is DependencyUnavailable (503), so the transaction
    rolls back and stores no response naming a task that was never queued.

    If the transaction then fails to commit, the job runs anyway: harmless, since every job is
    idempotent and works only from committed state (no job needs the request's own writes).
    """
    celery = current_app.extensions["celery"]
    try:
        sent = celery.send_task(run.name, args=(job,), retry=False, ignore_result=True)
    except kombu.exceptions.OperationalError as error:
        log.error("broker_unavailable", job=job, error=str(error))
        raise DependencyUnavailable(
            "The job queue is unreachable; nothing was started.", details={"broker": "unreachable"}
        ) from error
    return str(sent.id)
