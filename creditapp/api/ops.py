"""Liveness and readiness for load balancers and orchestrators, and metrics for Prometheus."""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import redis
import structlog
from flask import Response, current_app, request
from marshmallow import Schema, fields, validate
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from sqlalchemy import text
from sqlalchemy.engine import Engine

from creditapp.api import limits
from creditapp.api.errors import DATABASE_DOWN
from creditapp.api.openapi import declares
from creditapp.api.parsing import Blueprint
from creditapp.errors import DependencyUnavailable, Unauthorized
from creditapp.extensions import db
from creditapp.monitoring import DatabaseCollector, database_state

blp = Blueprint("ops", __name__, description="Probes and metrics, for operators")
log = structlog.get_logger(__name__)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.Equal("ok"))


class ReadinessSchema(Schema):
    status = fields.String(required=True, validate=validate.Equal("ready"))
    checks = fields.Dict(
        required=True,
        keys=fields.String(validate=validate.OneOf(["database", "redis"])),
        values=fields.String(validate=validate.Equal("ok")),
    )
    rate_limits = fields.String(
        required=True, validate=validate.OneOf(["redis", "memory", "memory_fallback", "off"])
    )


@blp.route("/healthz", methods=["GET"])
@limits.exempt
@declares(uses_database=False)
@blp.response(200, HealthSchema)
def healthz() -> Any:
    """The process is up (it reads nothing else)."""
    return {"status": "ok"}


def _process_metrics() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # under gunicorn: every worker's samples
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@blp.route("/metrics", methods=["GET"])
@limits.exempt
@declares(security="metrics_token")
@blp.response(
    200,
    {"type": "string"},
    content_type="text/plain",
    description="Prometheus text exposition format",
)
def metrics() -> Any:
    """Prometheus metrics: requests, messages, charges, ledger operations, jobs, and gauges read
    from the database when scraped. With METRICS_TOKEN set, only for `Authorization: Bearer
    <it>`."""
    token = current_app.config["METRICS_TOKEN"]
    if token:
        offered = request.headers.get("Authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("The metrics need the METRICS_TOKEN as a bearer token.")
    database = CollectorRegistry()
    database.register(
        DatabaseCollector(
            lambda: database_state(db.session),
            job_periods=current_app.config["JOB_PERIODS"],
            hold_ttl=current_app.config["HOLD_TTL_SECONDS"],
            unavailable=DATABASE_DOWN,
        )
    )
    try:
        body = _process_metrics() + generate_latest(database)
    finally:
        db.session.rollback()
    return Response(body, content_type=CONTENT_TYPE_LATEST)


# Within this, each dependency has answered or is reported unreachable: a load balancer's
# probe gets its answer in time even while a dependency hangs.
READINESS_SECONDS = 1.5
# The probes run here, so that the request waits for them no longer than READINESS_SECONDS. A
# probe still running then (a dependency that hangs) ends by its client's own timeouts; until
# it does, later requests wait on that same probe instead of queueing more behind it.
_probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")
_running: dict[str, Future[None]] = {}
_running_lock = threading.Lock()


def _probe(dependency: str, answers: Callable[..., None], *arguments: Any) -> Future[None]:
    with _running_lock:
        probe = _running.get(dependency)
        if probe is None or probe.done():
            probe = _running[dependency] = _probes.submit(answers, *arguments)
        return probe


def _database_answers(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _redis_answers(redis_url: str, client_options: dict[str, Any]) -> None:
    with redis.Redis.from_url(redis_url, **client_options) as client:
        client.ping()


@blp.route("/readyz", methods=["GET"])
@limits.exempt
@blp.response(200, ReadinessSchema)
def readyz() -> Any:
    """Ready to serve: the database and, when configured, Redis answer within 1.5 s (else 503,
    with the same checks in `details`)."""
    probes = {"database": _probe("database", _database_answers, db.engine)}
    redis_url = current_app.config["REDIS_URL"]
    if redis_url:
        options = current_app.config["REDIS_SINGLE_TRY_OPTIONS"]
        probes["redis"] = _probe("redis", _redis_answers, redis_url, options)
    wait(probes.values(), timeout=READINESS_SECONDS)
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        error = probe.exception(timeout=0) if probe.done() else TimeoutError("no answer")
        if error is not None:
            log.warning("readiness_dependency_down", dependency=name, error=str(error))
        checks[name] = "ok" if error is None else "unreachable"
    rate_limits = limits.storage_in_use()
    if any(state != "ok" for state in checks.values()):
        raise DependencyUnavailable(details={**checks, "rate_limits": rate_limits})
    return {"status": "ready", "checks": checks, "rate_limits": rate_limits}
