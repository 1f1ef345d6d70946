"""Liveness and readiness for load balancers and orchestrators, and metrics for Prometheus."""

from __future__ import annotations

import hmac
import os
from typing import Any

import redis
import structlog
from flask import Blueprint, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from creditapp.api.limits import limiter, storage_in_use
from creditapp.errors import DependencyUnavailable, Unauthorized
from creditapp.extensions import db
from creditapp.monitoring import DatabaseCollector, database_state

blp = Blueprint("ops", __name__)
log = structlog.get_logger(__name__)


@blp.route("/healthz", methods=["GET"])
@limiter.exempt
def healthz() -> Any:
    return {"status": "ok"}


def _process_metrics() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # under gunicorn: every worker's samples
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@blp.route("/metrics", methods=["GET"])
@limiter.exempt
def metrics() -> Any:
    """Prometheus text format. With METRICS_TOKEN set, only for `Authorization: Bearer <it>`."""
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
        )
    )
    try:
        body = _process_metrics() + generate_latest(database)
    finally:
        db.session.rollback()
    return Response(body, content_type=CONTENT_TYPE_LATEST)


@blp.route("/readyz", methods=["GET"])
@limiter.exempt
def readyz() -> Any:
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        checks["database"] = "ok"
    except SQLAlchemyError as error:
        log.warning("readiness_database_down", error=str(error))
        checks["database"] = "unreachable"
    redis_url = current_app.config["REDIS_URL"]
    if redis_url:
        try:
            redis.Redis.from_url(redis_url, socket_timeout=2).ping()
            checks["redis"] = "ok"
        except redis.RedisError as error:
            log.warning("readiness_redis_down", error=str(error))
            checks["redis"] = "unreachable"
    rate_limits = storage_in_use()
    if any(state != "ok" for state in checks.values()):
        raise DependencyUnavailable(details={**checks, "rate_limits": rate_limits})
    return {"status": "ready", "checks": checks, "rate_limits": rate_limits}
