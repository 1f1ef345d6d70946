"""The beat schedule, in one place: every job runs periodically, each period configurable
(`JOB_PERIOD_<NAME>_SECONDS`, e.g. `JOB_PERIOD_EXPIRE_HOLDS_SECONDS`; defaults in config)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

TASK = "creditapp.run_job"


def beat_schedule(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"job:{name}": {"task": TASK, "schedule": timedelta(seconds=seconds), "args": (name,)}
        for name, seconds in config["JOB_PERIODS"].items()
    }
