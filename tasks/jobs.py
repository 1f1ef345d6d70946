"""The Celery side of the jobs: one task runs any job by name, beat's schedule maps the jobs'
periods onto it, and `enqueue` queues a job for an HTTP request once its transaction commits.

Every job is idempotent, so the task is acknowledged late and put back when a worker dies: a
task a killed worker held runs again on another.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from celery.utils import uuid as new_task_id
from flask import current_app

from creditapp.database import DbSession, after_commit
from creditapp.extensions import db
from creditapp.jobs import run_job


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


def enqueue(session: DbSession, job: str) -> str:
    """Queue `job` once the session's current transaction has committed (never if it rolls
    back). The task id is chosen now, so that what the transaction stores can name it."""
    celery = current_app.extensions["celery"]
    task_id = new_task_id()
    after_commit(session, lambda: celery.send_task(run.name, args=(job,), task_id=task_id))
    return task_id
