"""`make run`: the embedded default, from a fresh checkout to a service with demo data.

Checks the port is free (`PORT`, default 5000), migrates, seeds the price book and the demo
data (printing the demo tokens as `export` lines), then runs gunicorn, a Celery worker and beat
together. Ctrl-C (or SIGTERM, or any of them ending) stops them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FLASK = [str(BIN / "flask"), "--app", "wsgi"]
HOST = "127.0.0.1"


def _port() -> int:
    text = os.environ.get("PORT") or "5000"
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        sys.exit(f"PORT must be a TCP port number (1-65535), got {text!r}")
    return int(text)


def _refuse_busy(port: int) -> None:
    with socket.socket() as probe:
        # As gunicorn binds: connections of a previous run in TIME_WAIT do not make it busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            sys.exit(
                f"Port {port} on {HOST} is in use (another `make run`?). Stop what uses it, or "
                f"choose another port: PORT={port + 1} make run"
            )


def _services(port: int) -> dict[str, list[str]]:
    return {
        # One process (in-memory rate limits are per process), a few threads.
        "web": [
            str(BIN / "gunicorn"),
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "wsgi:app",
        ],
        "worker+beat": [
            str(BIN / "celery"),
            "-A",
            "celery_worker:celery",
            "worker",
            "--beat",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
        ],
    }


def _serve(commands: dict[str, list[str]]) -> int:
    processes = {name: subprocess.Popen(command) for name, command in commands.items()}
    stopping = False

    def stop(_signal: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(process.poll() is None for process in processes.values()):
        time.sleep(0.2)
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return 0 if stopping else 1


def main() -> int:
    port = _port()
    _refuse_busy(port)
    # The embedded default is the demo: `POST /api/auth/demo` signs in as the demo user.
    os.environ.setdefault("DEMO_MODE", "true")
    for step in (["db", "upgrade"], ["pricing", "sync"], ["demo", "seed"]):
        prepared = subprocess.run([*FLASK, *step])
        if prepared.returncode:
            return prepared.returncode
    print(f"# The service: http://{HOST}:{port}  (Ctrl-C stops it)", flush=True)
    return _serve(_services(port))


if __name__ == "__main__":
    sys.exit(main())
