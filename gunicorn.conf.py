"""gunicorn's settings for creditapp (read from the working directory): Prometheus metrics in
multiprocess mode, so that `/metrics` adds up every worker's samples.

PROMETHEUS_MULTIPROC_DIR (default instance/prometheus) is emptied when gunicorn starts, and a
worker that exits is marked dead, so its live gauges stop counting. Give each gunicorn on a
machine a directory of its own.
"""

import os
import shutil
from pathlib import Path

metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent / "instance" / "prometheus")
)


def on_starting(server):  # type: ignore[no-untyped-def]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    Path(metrics_dir).mkdir(parents=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
