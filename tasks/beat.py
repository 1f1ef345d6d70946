"""Beat's scheduler: redbeat's, riding out Redis going away.

redbeat keeps the schedule and a lock in Redis, and lets one beat among several schedule.
Left alone, a beat whose Redis stops answering raises out of its loop and exits, and the jobs
stop until something restarts it (holds then stay reserved past their time). This one instead
logs the outage, waits, and carries on when Redis is back: it installs its schedule again (Redis
may have come back empty), renews its lock if it still holds it, or waits for the lock like any
other beat if it lapsed meanwhile (another beat may have taken over).
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from redbeat import RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

log = structlog.get_logger(__name__)

# What Redis going away looks like to its client: refused, reset, timed out.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
# How long a beat waits before looking again while Redis is away (a loop at most).
REDIS_RETRY_SECONDS = 5


class RedBeatSchedulerRidingOutages(RedBeatScheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._schedule_installed = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """Install the static schedule in Redis; if Redis is away at start, on a later tick."""
        try:
            super().setup_schedule()
        except REDIS_DOWN as error:
            log.warning("beat_redis_unavailable", during="start", error=str(error))
            return
        self._schedule_installed = True

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if not self._schedule_installed:
                self.setup_schedule()
                if not self._schedule_installed:
                    return self._retry_delay()
            if self.lock_key and not self._holds_lock():
                return float(self.max_interval)
            return float(super().tick(*args, **kwargs))
        except redis.exceptions.LockNotOwnedError:
            # The lock lapsed while Redis was away, or Redis came back empty: schedule only once
            # the lock is ours again, from a schedule installed again.
            log.warning("beat_lock_lost", lock=self.lock_key)
            self.lock = None
            self._schedule_installed = False
            return float(self.max_interval)
        except REDIS_DOWN as error:
            log.warning("beat_redis_unavailable", during="tick", error=str(error))
            # Redis may come back without its data (a restart without persistence, a failover
            # to an empty replica): the schedule lives only there, so it is installed again
            # (entries that survived keep their last run).
            self._schedule_installed = False
            return self._retry_delay()

    def _holds_lock(self) -> bool:
        """Whether this beat holds the lock now: it takes a free one without waiting (the
        lock redbeat takes at start is None when Redis was away then)."""
        if self.lock is not None:
            return True
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        # As redbeat does: extending sets the lock's time to live, rather than adding to it.
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            return False
        log.info("beat_lock_acquired", lock=self.lock_key)
        self.lock = lock
        return True

    def _retry_delay(self) -> float:
        return float(min(REDIS_RETRY_SECONDS, self.max_interval))

    def close(self) -> None:
        try:
            super().close()
        except REDIS_DOWN as error:  # the lock then lapses by its own timeout
            log.warning("beat_redis_unavailable", during="close", error=str(error))
