"""gunicorn's settings for creditapp (read from the working directory).

- Prometheus metrics in multiprocess mode, so that `/metrics` adds up every worker's samples:
  PROMETHEUS_MULTIPROC_DIR (default instance/prometheus) is emptied when gunicorn starts, and a
  worker that exits is marked dead, so its live gauges stop counting. Give each gunicorn on a
  machine a directory of its own.
- gthread workers: a streamed reply holds one of a process's GUNICORN_THREADS threads.
- The errors gunicorn answers itself, before the app sees the request (a request line or a
  header over its limit, a request that is not valid HTTP), come in the contract's JSON error
  body with an `X-Request-ID`, as nginx's own errors do (deploy/nginx/creditapp.conf), instead
  of gunicorn's HTML page. The request line may be as long as nginx lets through (8 KiB).
"""

import json
import os
import shutil
import uuid
from pathlib import Path

from gunicorn import util

limit_request_line = 8190  # gunicorn's largest; nginx's large_client_header_buffers are 8k

# A streamed reply holds a thread while it flows: threads per process for the streams it should
# carry at once, plus short requests (README, "Streams hold a thread each").
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "32"))

metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent / "instance" / "prometheus")
)


def on_starting(server):  # type: ignore[no-untyped-def]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    Path(metrics_dir).mkdir(parents=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


_ERRORS = {
    400: ("bad_request", "The request is not valid HTTP."),
    414: ("uri_too_long", "The request line is longer than 8 KiB."),
    431: ("headers_too_large", "A request header is too large, or there are too many."),
}


def write_json_error(sock, status_int, reason, mesg):  # type: ignore[no-untyped-def]
    """gunicorn's `util.write_error`, in the contract's shape. (gunicorn's message is not
    echoed: it quotes the client's request line.)"""
    code, message = _ERRORS.get(
        status_int, ("internal_error" if status_int >= 500 else "error", reason)
    )
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id, "details": {}}}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


# gunicorn has no setting for its error page; its workers call util.write_error by name.
util.write_error = write_json_error
