"""The Celery side of the jobs: one task runs any job by name, beat's schedule maps the jobs'
periods onto it, and `enqueue` queues a job an HTTP request asks for.

Every job is idempotent, so the task is acknowledged late and put back when a worker dies: a
task a killed worker held runs again on another.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kombu.exceptions
import structlog
from celery import shared_task
from flask import current_app

from creditapp.errors import DependencyUnavailable
from creditapp.extensions import db
from creditapp.jobs import run_job

log = structlog.get_logger(__name__)


@shared_task(name="creditapp.run_job", acks_late=True, reject_on_worker_lost=True)
def run(name: str, now: str | None = None) -> dict[str, Any]:
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    try:
        return run_job(name, db.session, now=moment, actor="celery", settings=current_app.config)
    finally:
        db.session.remove()


def beat_schedule(job_periods: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Every job at its period in seconds (`JOB_PERIODS` in the settings)."""
    return {
        f"job:{name}": {"task": run.name, "schedule": timedelta(seconds=seconds), "args": (name,)}
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
