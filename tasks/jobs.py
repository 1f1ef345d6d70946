"""One Celery task per job. Every job is idempotent, so tasks are acknowledged late and put
back when a worker dies: a task a killed worker held runs again on another."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from flask import current_app

from creditapp.extensions import db
from creditapp.jobs import run_job


@shared_task(name="creditapp.run_job", acks_late=True, reject_on_worker_lost=True)
def run(name: str, now: str | None = None) -> dict[str, Any]:
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    try:
        return run_job(name, db.session, now=moment, actor="celery", settings=current_app.config)
    finally:
        db.session.remove()
