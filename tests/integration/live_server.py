"""A real gunicorn process serving the app, for tests that need a whole server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tests.conftest import LOOPBACK_WEBHOOKS

ROOT = Path(__file__).resolve().parents[2]
# How long a process a test starts may take to come up, or to end once told to. Generous: the
# suite must pass on a machine whose every core is busy with other work (CI's can be), where a
# gunicorn takes many seconds to boot, and its graceful shutdown waits for requests in flight.
STARTUP_SECONDS = 60
STOP_SECONDS = 60


def stop(process: subprocess.Popen[Any], *, group: bool = False) -> None:
    """End a process a test started (with its process group, when it has one of its own) and
    reap it: SIGTERM, then SIGKILL if it has not ended within STOP_SECONDS. A process left
    unreaped would be reported (ResourceWarning, an error here) in whichever later test the
    garbage collector happens to run."""

    def send(signal_number: int) -> None:
        if process.poll() is None:
            if group:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal_number)
            else:
                process.send_signal(signal_number)

    send(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerUrl(str):
    """The server's base URL, knowing the gunicorn master's process id."""

    pid: int


@contextmanager
def live_server(
    env: dict[str, str], workers: int = 1, threads: int = 1, app: str = "wsgi:app"
) -> Iterator[ServerUrl]:
    """gunicorn serving `app` with the repository's settings (gunicorn.conf.py), once its
    `/healthz` answers."""
    port = free_port()
    # A file, not a pipe: nobody reads the log while the server runs, and a full pipe would
    # block the server on its next log line. Metrics get a directory of this server's own.
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as metrics_dir:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--log-level",
                "warning",
                app,
            ],
            cwd=ROOT,
            env={
                **os.environ,
                **LOOPBACK_WEBHOOKS,
                "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        base = ServerUrl(f"http://127.0.0.1:{port}")
        base.pid = process.pid
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                        break
                except OSError:  # refused, reset, or timed out while the worker boots
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"server did not start: {log.read()!r}") from None
                    time.sleep(0.1)
            yield base
        finally:
            stop(process)


def call(  # type: ignore[no-untyped-def]
    method: str,
    url: str,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
):
    request = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def retry_until_run(  # type: ignore[no-untyped-def]
    method: str,
    url: str,
    token: str,
    body: bytes,
    headers: dict[str, str],
    *,
    ran: int,
    seconds: float = 20,
):
    """A client's retry with the Idempotency-Key of a request that lost the database: refused
    while the key is still held (409), or once by a pool meeting a dropped connection (503),
    until it runs (`ran`) or `seconds` pass; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        status, answer_headers, answer = call(method, url, token, body, headers)
        if status == ran or time.monotonic() > deadline:
            return status, answer_headers, answer
        assert status in (409, 503), answer
        time.sleep(0.25)


@contextmanager
def celery_process(
    *arguments: str, env: dict[str, str], output: Any = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A celery_worker:celery <arguments>` with `env` (the whole environment), in a
    process group of its own so that a signal reaches its pool too; ended on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_worker:celery", *arguments],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not subprocess.DEVNULL else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop(process, group=True)
