"""Security events: a refused sign-in, a stolen refresh token presented again. Each is logged
(`security_event`) and counted in `creditapp_auth_failures_total{reason}` (Prometheus)."""

from __future__ import annotations

from typing import Any

import structlog
from flask import request

from creditapp.metrics import AUTH_FAILURES

log = structlog.get_logger("creditapp.security")


def security_event(reason: str, **details: Any) -> None:
    AUTH_FAILURES.labels(reason=reason).inc()
    log.warning("security_event", reason=reason, client_ip=request.remote_addr, **details)
