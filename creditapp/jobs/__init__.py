"""The background jobs (contract section 6). Each is a plain function of a session, a time and
an audit context, safe to run several times at once and to crash anywhere; the Celery task in
`tasks/` and `flask jobs run` call the same `run_job`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from creditapp import ledger
from creditapp.database import DbSession, dialect_of, longer_statements, write_transaction
from creditapp.jobs import (
    compensations,
    grants,
    holds,
    idempotency,
    purchases,
    reconciliation,
    refresh,
    rollup,
)
from creditapp.jobs.models import JobOutcome
from creditapp.signals import delivery

log = structlog.get_logger(__name__)
Job = Callable[..., dict[str, Any]]

JOBS: dict[str, Job] = {
    "refresh": refresh.run,
    "compensations": compensations.run,
    "rollup": rollup.run,
    "expire-holds": holds.run,
    "reconcile": reconciliation.run,
    "expire-grants": grants.run,
    "purge-idempotency": idempotency.run,
    "sync-purchases": purchases.run,
    "deliver-webhooks": delivery.run,
}


def _options(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    if name == "compensations":
        return {
            "policy": compensations.RetryPolicy(
                max_attempts=settings["COMPENSATION_MAX_ATTEMPTS"],
                base_delay=timedelta(seconds=settings["COMPENSATION_BASE_DELAY_SECONDS"]),
            )
        }
    if name == "expire-grants":
        return {"notice": timedelta(days=settings["GRANT_EXPIRING_NOTICE_DAYS"])}
    if name == "purge-idempotency":
        return {"retention": settings["IDEMPOTENCY_RETENTION"]}
    if name in ("sync-purchases", "deliver-webhooks"):
        return {"settings": settings}
    return {}


def run_job(
    name: str, session: DbSession, *, now: datetime, actor: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Run one job to completion as of `now` and return its summary; its outcome is counted
    (`job_outcomes`, for `/metrics`) in a transaction of its own. `now` is taken in UTC (a
    naive one as UTC): periods and days are UTC's, whatever offset a catch-up run was given."""
    now = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    context = ledger.AuditContext(actor_type="job", actor_id=f"{name}:{actor}")
    started = time.perf_counter()
    try:
        with longer_statements(settings["JOB_STATEMENT_TIMEOUT_SECONDS"]):
            summary = JOBS[name](session, now=now, context=context, **_options(name, settings))
    except Exception as error:
        # Logged first: counting it needs the database, which may be what failed the run.
        log.error("job_run", job=name, outcome="failure", actor=actor, error=str(error))
        session.rollback()
        try:
            _count(session, name, "failure")
        except Exception as uncounted:  # the run's own error is the one raised
            log.warning("job_outcome_not_counted", job=name, error=type(uncounted).__name__)
        raise
    _count(session, name, "success")
    took_ms = round((time.perf_counter() - started) * 1000)
    log.info(
        "job_run", job=name, outcome="success", actor=actor, duration_ms=took_ms, summary=summary
    )
    return summary


def _count(session: DbSession, name: str, outcome: str) -> None:
    # The time the run ended: a catch-up run "as of" another time still finished now.
    finished = datetime.now(UTC)
    with write_transaction(session):
        insert = dialect_of(session).insert(JobOutcome)
        session.execute(
            insert.values(
                job=name, outcome=outcome, runs=1, last_at=finished
            ).on_conflict_do_update(
                index_elements=["job", "outcome"],
                set_={"runs": JobOutcome.runs + 1, "last_at": insert.excluded.last_at},
            )
        )
