"""`make run`: the embedded default, from a fresh checkout to a service with demo data.

Checks the port is free (`PORT`, default 5000), migrates (after deleting the SQLite database
of earlier runs with `--fresh`, `make run FRESH=1`), seeds the price book and the demo data
(printing the demo tokens as `export` lines), then runs gunicorn, a Celery worker and beat
together, the demo sign-in allowing a person clicking around more than production's limit.
Credits are bought from a local fake of Stripe (tests/fake_stripe.py, in a process of its own,
with fixed demo keys: nothing is ever charged), unless STRIPE_SECRET_KEY is set: then from
Stripe itself (its test mode), as the environment says.

Ctrl-C (or SIGTERM, SIGHUP, or any of them ending) stops them all, every time, in seconds.
A terminal's Ctrl-C used to reach every process at once: gunicorn's worker then exits at once
(SIGINT), and Python's exit waits for its request threads, forever for one reading a request a
client had begun to send (gunicorn reads without a timeout), SIGTERM only asking it again to
stop; its master would kill it after its graceful timeout (30 s), but was killed itself first
(after 20 s here), leaving the worker orphaned on the port. Now each service runs in a session,
so a process group, of its own, and only this script hears Ctrl-C. It asks each service to stop
(SIGTERM): gunicorn finishes its requests within STOP_SECONDS, killing a worker still busy
then; Celery finishes its running task. Whatever is left of a service's group after
KILL_AFTER_SECONDS is killed (SIGKILL), saying so. A second Ctrl-C kills them at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLASK = [str(BIN / "flask"), "--app", "wsgi"]
HOST = "127.0.0.1"
# gunicorn's graceful timeout: its workers finish their requests within this, or its master
# kills them. This script waits a little longer before it kills what is left.
STOP_SECONDS = 5
KILL_AFTER_SECONDS = STOP_SECONDS + 10
# A person clicking around the pages signs in more often than the service-wide limit allows.
DEMO_SIGN_IN_LIMIT = "60 per minute"
# The fake Stripe's keys: fixed, so that a database of an earlier run goes on with the next.
FAKE_STRIPE_KEYS = [
    "--api-key",
    "sk_test_creditapp_demo",
    "--webhook-secret",
    "whsec_creditapp_demo",
]
# How long the fake Stripe may take to say where it listens (a busy machine starts Python
# slowly).
FAKE_STRIPE_STARTUP_SECONDS = 60


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


def _delete_database() -> None:
    """`--fresh`: the SQLite database of an earlier run goes, so that the README's numbers come
    out again. Any other database is the operator's to drop."""
    sys.path.insert(0, str(ROOT))
    from creditapp.config import load_config

    url = load_config().SQLALCHEMY_DATABASE_URI
    if not url.startswith("sqlite:///"):
        sys.exit(f"FRESH=1 deletes the SQLite database only; drop {url.split('@')[-1]} yourself")
    database = Path(url.removeprefix("sqlite:///"))
    for path in (database, *(Path(f"{database}{end}") for end in ("-journal", "-wal", "-shm"))):
        path.unlink(missing_ok=True)
    print(f"# Deleted {database}: a fresh database", flush=True)


def _start_fake_stripe(port: int) -> subprocess.Popen[bytes]:
    """The fake Stripe, its events going to this service's webhook; its environment (where its
    API is, its keys) goes into this process's, for the web, the worker and beat to inherit."""
    webhook_url = f"http://{HOST}:{port}/api/webhooks/stripe"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_stripe",
            "--webhook-url",
            webhook_url,
            *FAKE_STRIPE_KEYS,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as ready:
        ready.register(process.stdout, selectors.EVENT_READ)
        said = ready.select(FAKE_STRIPE_STARTUP_SECONDS) and process.stdout.readline()
    if not said:
        _stop(process)
        sys.exit("The fake Stripe did not start (python -m tests.fake_stripe)")
    os.environ.update(json.loads(said))
    fake = os.environ["STRIPE_API_BASE"]
    print(f"# Credits are bought from a fake Stripe at {fake}: nothing is charged", flush=True)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=KILL_AFTER_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _services(port: int) -> dict[str, list[str]]:
    return {
        # One process (in-memory rate limits are per process), with gunicorn.conf.py's threads:
        # a streamed reply holds one while it flows, and a few tabs streaming must not hold
        # the dashboard's every other request.
        "web": [
            str(BIN / "gunicorn"),
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            "1",
            "--graceful-timeout",
            str(STOP_SECONDS),
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


def _live_members(group: int) -> bool:
    """Whether a process group has a live member. Zombies do not count: a process whose parent
    ended before reaping it (Celery's beat) waits for init to reap it, holding nothing. Without
    /proc (not Linux), any member counts."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            text = stat.read_text()
            state, _parent, process_group = text[text.rindex(")") + 2 :].split()[:3]
            if int(process_group) == group and state != "Z":
                return True
    return False


def _kill_what_is_left(name: str, process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to whatever is left of a service's process group (its leader's pid is the
    group's id), the leader gone or not, saying so: a service should have stopped by itself."""
    if not _live_members(process.pid):
        return
    print(f"# {name} did not stop when asked: killed", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _serve(commands: dict[str, list[str]], started: dict[str, subprocess.Popen[bytes]]) -> int:
    """Runs `commands` beside the services already `started`, until a signal or any of them
    ends; then stops them all."""
    signals: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        signals.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    services = {
        **started,
        **{
            name: subprocess.Popen(command, start_new_session=True)
            for name, command in commands.items()
        },
    }
    processes = list(services.values())
    while not signals and all(process.poll() is None for process in processes):
        time.sleep(0.2)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + KILL_AFTER_SECONDS
    while (
        any(process.poll() is None for process in processes)
        and time.monotonic() < deadline
        and len(signals) < 2  # Ctrl-C again: at once
    ):
        time.sleep(0.1)
    # Whatever is left of each group (a gunicorn worker whose master is gone, a Celery pool
    # process) would keep the port or take the broker's tasks: nothing outlives `make run`.
    for name, process in services.items():
        _kill_what_is_left(name, process)
    for process in processes:
        process.wait()
    return 0 if signals else 1


def main() -> int:
    fresh = sys.argv[1:] == ["--fresh"]
    if sys.argv[1:] and not fresh:
        sys.exit("usage: run_embedded.py [--fresh]")
    port = _port()
    _refuse_busy(port)
    # The embedded default is the demo: `POST /api/auth/demo` signs in as the demo user.
    os.environ.setdefault("DEMO_MODE", "true")
    os.environ.setdefault("DEMO_SIGN_IN_LIMIT", DEMO_SIGN_IN_LIMIT)
    # A webhook receiver on this machine (http://127.0.0.1:…) is what one tries webhooks with.
    os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    # Where Stripe's payment page sends the buyer back: this service.
    os.environ.setdefault("PUBLIC_BASE_URL", f"http://{HOST}:{port}")
    if fresh:
        _delete_database()
    started = (
        {} if os.environ.get("STRIPE_SECRET_KEY") else {"fake Stripe": _start_fake_stripe(port)}
    )
    try:
        for step in (["db", "upgrade"], ["pricing", "sync"], ["demo", "seed"]):
            prepared = subprocess.run([*FLASK, *step])
            if prepared.returncode:
                return prepared.returncode
        print(f"# The service: http://{HOST}:{port}  (Ctrl-C stops it)", flush=True)
        return _serve(_services(port), started)
    finally:
        # Stopped already by _serve, unless preparing failed or was interrupted.
        for process in started.values():
            _stop(process)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while migrating or seeding
        sys.exit(130)
