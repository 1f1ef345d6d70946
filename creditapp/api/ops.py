"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from flask import Blueprint, current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from creditapp.api.limits import limiter, storage_in_use
from creditapp.errors import DependencyUnavailable
from creditapp.extensions import db

blp = Blueprint("ops", __name__)
log = structlog.get_logger(__name__)


@blp.route("/healthz", methods=["GET"])
@limiter.exempt
def healthz() -> Any:
    return {"status": "ok"}


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
