"""What the benchmarks share: production's settings, work on threads started together, its
rate, percentiles."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable


def production_settings() -> dict[str, str]:
    """The settings production starts with (creditapp.config.ProductionConfig), as a benchmark
    runs it: no rate limits, Redis for its broker only (TEST_REDIS_URL's, else database 14)."""
    return {
        "CREDITAPP_ENV": "production",
        "JWT_SECRET_KEY": secrets.token_hex(32),
        "RATELIMIT_ENABLED": "false",
        "REDIS_URL": os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/14",
        "METRICS_TOKEN": secrets.token_hex(16),
    }


def rate(work: Callable[[int, threading.Event], int], threads: int, seconds: float) -> float:
    """Run `work(index, stop)` on `threads` threads released together for `seconds`; each
    returns how many operations it completed once `stop` is set. Operations per second."""
    stop = threading.Event()
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        ready.wait()
        counts[index] = work(index, stop)

    running = [threading.Thread(target=worker, args=(index,)) for index in range(threads)]
    for thread in running:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in running:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
