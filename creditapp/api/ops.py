"""Liveness and readiness for load balancers and orchestrators, and metrics for Prometheus."""

from __future__ import annotations

import hmac
import os
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
from sqlalchemy.exc import SQLAlchemyError

from creditapp.api import limits
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
        )
    )
    try:
        body = _process_metrics() + generate_latest(database)
    finally:
        db.session.rollback()
    return Response(body, content_type=CONTENT_TYPE_LATEST)


@blp.route("/readyz", methods=["GET"])
@limits.exempt
@blp.response(200, ReadinessSchema)
def readyz() -> Any:
    """Ready to serve: the database and, when configured, Redis answer (else 503, with the
    same checks in `details`)."""
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
    rate_limits = limits.storage_in_use()
    if any(state != "ok" for state in checks.values()):
        raise DependencyUnavailable(details={**checks, "rate_limits": rate_limits})
    return {"status": "ready", "checks": checks, "rate_limits": rate_limits}
