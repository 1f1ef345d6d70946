"""Beat's schedule: every job, each at its configured period."""

from __future__ import annotations

from datetime import timedelta

from creditapp.config import JOB_PERIODS, load_config
from creditapp.jobs import JOBS
from tasks.jobs import beat_schedule, run


def test_every_job_is_scheduled_at_its_default_period(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for job in JOBS:
        monkeypatch.delenv(f"JOB_PERIOD_{job.upper().replace('-', '_')}_SECONDS", raising=False)
    schedule = beat_schedule(load_config("development").JOB_PERIODS)
    assert set(JOB_PERIODS) == set(JOBS)
    assert schedule == {
        f"job:{job}": {
            "task": run.name,
            "schedule": timedelta(seconds=seconds),
            "args": (job,),
            "options": {"expires": seconds},
        }
        for job, seconds in {
            "refresh": 300,
            "compensations": 60,
            "rollup": 300,
            "expire-holds": 60,
            "reconcile": 3600,
            "expire-grants": 300,
            "purge-idempotency": 3600,
            "sync-purchases": 600,
            "deliver-webhooks": 10,
        }.items()
    }


def test_a_period_comes_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("JOB_PERIOD_EXPIRE_GRANTS_SECONDS", "42")
    monkeypatch.setenv("JOB_PERIOD_PURGE_IDEMPOTENCY_SECONDS", "7")
    schedule = beat_schedule(load_config("development").JOB_PERIODS)
    assert schedule["job:expire-grants"]["schedule"] == timedelta(seconds=42)
    assert schedule["job:purge-idempotency"]["schedule"] == timedelta(seconds=7)
    assert schedule["job:reconcile"]["schedule"] == timedelta(seconds=3600)
