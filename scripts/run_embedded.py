"""Run the web server, a Celery worker and beat together; stop them together.

`make run` calls this after migrating and seeding. Ctrl-C (or SIGTERM, or either process
ending) stops both processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
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
    "web": [str(BIN / "flask"), "--app", "wsgi", "run", "--host", "127.0.0.1", "--port", "5000"],
}


def main() -> int:
    processes = {name: subprocess.Popen(command) for name, command in COMMANDS.items()}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
