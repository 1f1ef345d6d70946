"""gunicorn's settings for creditapp (read from the working directory).

- Prometheus metrics in multiprocess mode, so that `/metrics` adds up every worker's samples:
  PROMETHEUS_MULTIPROC_DIR (default instance/prometheus) loses its samples (`*.db`, nothing else)
  when gunicorn starts, and a worker that exits is marked dead, so its live gauges stop
  counting. Give each gunicorn on a machine a directory of its own.
- gthread workers: a streamed reply holds one of a process's GUNICORN_THREADS threads.
- Each worker listens on a socket of its own (SO_REUSEPORT), so that connections spread over
  the workers; systemd hears that gunicorn is ready from the first worker listening, and a
  stopping worker leaves the spread before it finishes its requests.
- The errors gunicorn answers itself, before the app sees the request (a request line or a
  header over its limit, a request that is not valid HTTP), come in the contract's JSON error
  body with an `X-Request-ID`, as nginx's own errors do (deploy/nginx/creditapp.conf), instead
  of gunicorn's HTML page. The request line may be as long as nginx lets through (8 KiB).
"""

import json
import os
import select
import uuid
from pathlib import Path

from gunicorn import systemd, util

limit_request_line = 8190  # gunicorn's largest; nginx's large_client_header_buffers are 8k

# A streamed reply holds a thread while it flows: threads per process for the streams it should
# carry at once, plus short requests (README, "Streams hold a thread each").
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "32"))

# Connections spread over the workers: each worker listens on a socket of its own and the kernel
# gives each new connection to one of them by a hash of its addresses. On one shared socket every
# idle worker is woken and the first to run accepts whatever is queued, so a burst of connections
# lands on one worker, which then serves every request sent on them (nginx keeps its connections
# to gunicorn open: docs/deploy.md, "Connections and workers"). 16 keep-alive clients on 4
# workers, 2026-12-03: one shared socket gave 16/0/0/0 in 8 runs of 10 (6/4/3/3 and 5/5/3/3 in
# the others); a socket per worker 5/4/4/3 to 7/4/4/1 in 10 runs of 11, and 7/6/3/0 once.
reuse_port = True

# A stopping worker (`systemctl reload`, a stop) finishes what it serves: a provider's call and
# a stream each end within a hold's life (a stream at its deadline, a tenth of it before the
# hold expires). Killed sooner, it would leave their charges to the hold's expiry, which
# charges nothing: the words streamed until then would never be paid for. It accepts nothing
# new meanwhile (post_worker_init), and a reload's new workers serve from the start.
graceful_timeout = int(os.environ.get("HOLD_TTL_SECONDS", "600"))

metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent / "instance" / "prometheus")
)


def on_starting(server):  # type: ignore[no-untyped-def]
    # Only the samples' files: the directory may be one an operator shares with other things.
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    for samples in Path(metrics_dir).glob("*.db"):
        samples.unlink(missing_ok=True)
    # The master would tell systemd it is ready before any worker listens (the master holds no
    # socket): a worker does, once it listens (post_fork; the unit's NotifyAccess=all).
    server.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """The worker listens now; connections wait for it to load the app. systemd takes the first
    READY=1 and ignores the others (every worker's, and a restarted worker's)."""
    if server.notify_socket:
        os.environ["NOTIFY_SOCKET"] = server.notify_socket
        systemd.sd_notify("READY=1", server.log, unset_environment=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """A stopping worker closes its socket as soon as it stops accepting, having accepted what
    was queued on it: gunicorn closes it only after the worker's last request, and until then
    the kernel keeps giving it new connections, which nobody accepts and the close resets."""
    set_accept_enabled = worker.set_accept_enabled

    def set_accept_enabled_and_close_when_stopping(enabled):  # type: ignore[no-untyped-def]
        set_accept_enabled(enabled)
        if enabled or worker.alive:
            return
        for listener in worker.sockets:
            # At most a backlog's worth: connections still arriving meanwhile are not waited for.
            for _ in range(worker.cfg.backlog):
                if not select.select([listener], [], [], 0)[0]:
                    break
                worker.accept(listener)
            listener.close()

    worker.set_accept_enabled = set_accept_enabled_and_close_when_stopping


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
