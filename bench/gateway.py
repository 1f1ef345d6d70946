"""The gateway side by side with LiteLLM's proxy: what each adds to a direct provider call, and
what each costs the server, in one run, with the floor under a metered call on this stack.

One fake provider (tests/fake_providers.py in a process of its own, answering at once in
OpenAI's wire format) reached through five doors:

  (a) direct: the OpenAI SDK straight to the fake provider;
  (b) LiteLLM's proxy in front of it: litellm[proxy] pinned in a virtual environment of its
      own, created by this benchmark on its first run under ~/.cache/creditapp-bench and reused
      afterwards; one uvicorn worker, a master key, no database;
  (c) creditapp's `POST /v1/chat/completions`, with an API key;
  (d) creditapp's `POST /api/conversations/<id>/messages`, with a JWT: JSON over a keep-alive
      http.client connection as in bench/messages.py, since the OpenAI SDK cannot speak it;
  (e) the floor (bench/floor.py): Flask under the same gunicorn, the provider called as
      creditapp calls it, and two one-statement transactions on creditapp's database, without
      a ledger: what any metered call here pays before its own work.

(a)-(c) and (e) are the same client type, `openai.OpenAI(...).chat.completions.create`, not
streamed. creditapp is gunicorn (4 workers x 4 threads) on a PostgreSQL database of its own,
seeded as in bench/messages.py; the floor the same gunicorn on the same database.

1. Latency, one client: rounds of one call through each door, the order rotated every round;
   the median and p95 of each door, and what it adds to the direct call of the same round.
2. Throughput, 16 clients: (b) to (e) in turn, the order rotated every round; calls per
   second, and the CPU (user + system) their server spent per 1,000 calls: gunicorn's master
   and workers with the PostgreSQL backends of its database, or LiteLLM's process tree.
3. Database transactions per call of (c) to (e): one client, from the database's statistics.

Without API keys in creditapp (POST /api/keys answering 404), (c) is left out and said to be.
`--load` keeps a CPU hog spinning on the last core for the whole run.

    make bench            # or: .venv/bin/python bench/gateway.py [--seconds 7] [--load]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import percentile, rate  # noqa: E402
from bench.messages import (  # noqa: E402
    ADMIN_URL,
    CLIENTS,
    DIRECT_BODY,
    THREADS,
    WORKERS,
    ChatServer,
    Chatter,
    Client,
    chat_server,
    send_message,
)
from tests.integration.live_server import (  # noqa: E402
    STARTUP_SECONDS,
    ServerUrl,
    call,
    free_port,
    live_server,
    stop,
)

LITELLM_VERSION = "1.108.7"
MODEL = "openai/gpt-bench"  # as the price book names it (bench/messages.py seeds it)
# PostgreSQL (15) sends a backend's counts to pg_stat_database at most once a second while it
# works, and up to 10 s after it fell idle: transactions are counted once that has passed.
STATISTICS_DELAY = 11.0
TRANSACTION_SAMPLE = 200  # calls per door for the transactions per call
WARM_UP_ROUNDS = 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Call = Callable[[], None]  # one call through a door; raises if it did not succeed


@dataclass(frozen=True)
class Door:
    label: str
    open_caller: Callable[[int], Call]  # client `index`'s own connection to the door
    server_pid: int | None  # the root of the server's process tree (None: the provider)
    database: str | None  # creditapp's database behind the door


def sdk_door(base_url: str, api_keys: list[str], model: str) -> Callable[[int], Call]:
    """Callers of `chat.completions.create` through the OpenAI SDK, client `index` with the
    key `api_keys[index]` (round robin)."""

    def open_caller(index: int) -> Call:
        client = openai.OpenAI(
            base_url=base_url, api_key=api_keys[index % len(api_keys)], max_retries=0, timeout=30
        )

        def create() -> None:
            client.chat.completions.create(
                model=model,
                messages=DIRECT_BODY["messages"],
                max_completion_tokens=DIRECT_BODY["max_completion_tokens"],
            )

        return create

    return open_caller


def message_door(base: str, chatters: list[Chatter]) -> Callable[[int], Call]:
    keys = itertools.count()

    def open_caller(index: int) -> Call:
        client, chatter = Client(base), chatters[index % len(chatters)]

        def send() -> None:
            status = send_message(client, chatter, next(keys))
            if status != 201:
                raise RuntimeError(f"message answered HTTP {status}")

        return send

    return open_caller


def litellm_python() -> Path:
    """The interpreter of LiteLLM's virtual environment, created on first use. It is complete
    once its marker exists: an interrupted installation is started again."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    environment = cache / "creditapp-bench" / f"litellm-{LITELLM_VERSION}"
    python, marker = environment / "bin" / "python", environment / "installed"
    if marker.exists():
        return python
    interpreter = shutil.which("python3.11")
    if interpreter is None:
        raise SystemExit("LiteLLM's environment needs python3.11 on the PATH")
    print(f"Creating LiteLLM's environment in {environment} (once)", file=sys.stderr, flush=True)
    shutil.rmtree(environment, ignore_errors=True)
    subprocess.run([interpreter, "-m", "venv", str(environment)], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )
    marker.touch()
    return python


@dataclass(frozen=True)
class LiteLLM:
    base: str
    pid: int
    master_key: str
    log: Path  # its output

    def errors(self) -> list[str]:
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if "ERROR" in line or "Traceback" in line or "Exception" in line
        ]


@contextmanager
def litellm_proxy(provider_base: str, provider_key: str) -> Iterator[LiteLLM]:
    """LiteLLM's proxy serving MODEL from the fake provider: one worker, a master key of this
    run, and an environment of its own, without creditapp's DATABASE_URL (LiteLLM would keep
    its keys and spend logs there) and with the price map it ships (it would fetch one)."""
    python = litellm_python()
    port, master_key = free_port(), f"sk-{secrets.token_hex(24)}"
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": MODEL,
                    "api_base": provider_base,
                    "api_key": provider_key,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
    }
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "WARNING",  # no access log line per request, as gunicorn here
    }
    with tempfile.TemporaryDirectory() as directory:
        config_path, log_path = Path(directory) / "litellm.yaml", Path(directory) / "log"
        config_path.write_text(json.dumps(config))  # YAML reads JSON
        log = log_path.open("ab")
        process = subprocess.Popen(
            [
                python,
                "-m",
                "litellm.proxy.proxy_cli",
                "--config",
                str(config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/health/liveliness", timeout=5):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        output = log_path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"LiteLLM did not start: {output!r}") from None
                    time.sleep(0.2)
            yield LiteLLM(base, process.pid, master_key, log_path)
        finally:
            stop(process, group=True)
            log.close()


@contextmanager
def floor_server(server: ChatServer) -> Iterator[tuple[ServerUrl, list[str]]]:
    """bench/floor.py served as creditapp is (gunicorn with its settings, WORKERS x THREADS) on
    creditapp's database, and the bearer of each seeded user's account (its id)."""
    with psycopg.connect(server.database_url) as connection:
        rows = connection.execute("SELECT id FROM accounts WHERE user_id IS NOT NULL ORDER BY id")
        bearers = [str(account_id) for (account_id,) in rows]
    env = {**server.provider_urls, "DATABASE_URL": server.database_url}
    with live_server(env, workers=WORKERS, threads=THREADS, app="bench.floor:app") as base:
        yield base, bearers


def api_keys(base: str, chatters: list[Chatter]) -> list[str] | None:
    """An API key of each chatter's, or None while creditapp has no API keys."""
    keys: list[str] = []
    for chatter in chatters:
        status, _, body = call(
            "POST",
            f"{base}/api/keys",
            chatter.token,
            json.dumps({"name": "bench"}).encode(),
            {"Idempotency-Key": secrets.token_hex(8)},
        )
        if status == 404 and not keys:
            return None
        if status != 201:
            raise SystemExit(f"POST /api/keys answered HTTP {status}: {body[:300]!r}")
        keys.append(json.loads(body)["key"])
    return keys


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        tree.append(pid)
        waiting.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each process has spent so far (the ended ones left out)."""
    spent = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        spent[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return spent


@dataclass
class Spent:
    calls: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0  # the door's server, PostgreSQL included
    database_cpu: float = 0.0  # of which its PostgreSQL backends
    client_cpu: float = 0.0  # this process: the 16 clients
    per_process: dict[int, float] = field(default_factory=dict)  # the server's, by process id

    def add(self, phase: Spent) -> None:
        self.calls += phase.calls
        self.seconds += phase.seconds
        self.server_cpu += phase.server_cpu
        self.database_cpu += phase.database_cpu
        self.client_cpu += phase.client_cpu
        for pid, cpu in phase.per_process.items():
            self.per_process[pid] = self.per_process.get(pid, 0.0) + cpu

    def rate(self) -> float:
        return self.calls / self.seconds

    def per_thousand(self, cpu: float) -> float:
        return cpu / self.calls * 1000


class Monitor:
    """Reads the PostgreSQL statistics through a connection to the admin database, so that
    its own queries are not counted with the bench database's."""

    def __init__(self) -> None:
        self.connection = psycopg.connect(ADMIN_URL, autocommit=True)

    def backends(self, database: str) -> list[int]:
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = "
            "'client backend'",
            (database,),
        ).fetchall()
        return [pid for (pid,) in rows]

    def transactions(self, database: str) -> int:
        row = self.connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def measure_load(door: Door, seconds: float, monitor: Monitor) -> Spent:
    """CLIENTS clients calling through the door for `seconds`; every call must succeed. Each
    phase opens connections of its own: the servers close those left idle for a few seconds."""
    callers = [door.open_caller(index) for index in range(CLIENTS)]
    made = [0] * CLIENTS
    failures: list[str] = []

    def calls(index: int, stop_calling: threading.Event) -> int:
        while not stop_calling.is_set():
            try:
                callers[index]()
            except Exception as error:  # any failure ends this client: it is reported below
                failures.append(f"{type(error).__name__}: {error}")
                break
            made[index] += 1
        return made[index]

    def server_processes() -> dict[int, float]:
        return cpu_seconds(process_tree(door.server_pid)) if door.server_pid else {}

    def database_processes() -> dict[int, float]:
        return cpu_seconds(monitor.backends(door.database)) if door.database else {}

    server_before, database_before = server_processes(), database_processes()
    client_before, started = sum(os.times()[:2]), time.perf_counter()
    rate(calls, CLIENTS, seconds)
    elapsed = time.perf_counter() - started
    client_after = sum(os.times()[:2])
    server_after, database_after = server_processes(), database_processes()
    if failures:
        raise SystemExit(f"{door.label}: {len(failures)} clients failed, e.g. {failures[0]}")
    per_process = {pid: spent - server_before.get(pid, 0.0) for pid, spent in server_after.items()}
    database_cpu = sum(
        spent - database_before.get(pid, 0.0) for pid, spent in database_after.items()
    )
    return Spent(
        calls=sum(made),
        seconds=elapsed,
        server_cpu=sum(per_process.values()) + database_cpu,
        database_cpu=database_cpu,
        client_cpu=client_after - client_before,
        per_process=per_process,
    )


def transactions_per_call(doors: list[Door], monitor: Monitor) -> dict[str, float]:
    """TRANSACTION_SAMPLE calls through each door in turn, one client, counted between two
    readings of its database's statistics, each taken once they have caught up. As the server
    counts them: a statement psycopg prepares may open a transaction of its own too."""
    per_call = {}
    time.sleep(STATISTICS_DELAY)
    for door in doors:
        assert door.database is not None
        caller = door.open_caller(0)
        before = monitor.transactions(door.database)
        for _ in range(TRANSACTION_SAMPLE):
            caller()
        time.sleep(STATISTICS_DELAY)
        per_call[door.label] = (monitor.transactions(door.database) - before) / TRANSACTION_SAMPLE
    return per_call


@contextmanager
def cpu_hog(enabled: bool) -> Iterator[None]:
    """With `enabled`, a process spinning on the last core for the whole run: the machine as
    busy as when other work shares it."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(hog.pid, {max(os.sched_getaffinity(0))})
    try:
        yield
    finally:
        stop(hog)


def rotated(doors: list[Door], by: int) -> list[Door]:
    by %= len(doors)
    return doors[by:] + doors[:by]


def latencies(doors: list[Door], rounds: int) -> dict[str, list[float]]:
    """Seconds each call took, one client, a call through every door each round (the first
    door of a round rotating), after WARM_UP_ROUNDS unrecorded."""
    callers = {door.label: door.open_caller(0) for door in doors}
    took: dict[str, list[float]] = {door.label: [] for door in doors}
    for index in range(WARM_UP_ROUNDS + rounds):
        for door in rotated(doors, index):
            started = time.perf_counter()
            callers[door.label]()
            if index >= WARM_UP_ROUNDS:
                took[door.label].append(time.perf_counter() - started)
    return took


def throughputs(
    servers: list[Door], seconds: float, rounds: int, monitor: Monitor
) -> dict[str, Spent]:
    """Every door under load for `seconds` a round, the first door of a round rotating; the
    rounds' sums."""
    for door in servers:  # pools and caches warmed
        measure_load(door, 1.0, monitor)
    spent = {door.label: Spent() for door in servers}
    for index in range(rounds):
        for door in rotated(servers, index):
            spent[door.label].add(measure_load(door, seconds, monitor))
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=7.0, help="per throughput phase")
    parser.add_argument("--rounds", type=int, default=300, help="latency rounds, one client")
    parser.add_argument("--throughput-rounds", type=int, default=2)
    parser.add_argument("--load", action="store_true", help="a CPU hog on the other core")
    args = parser.parse_args()

    with (
        cpu_hog(args.load),
        chat_server(CLIENTS, workers=WORKERS, threads=THREADS) as server,
        litellm_proxy(
            server.provider_urls["OPENAI_BASE_URL"], server.provider_urls["OPENAI_API_KEY"]
        ) as litellm,
        floor_server(server) as (floor_base, floor_bearers),
    ):
        keys = api_keys(server.base, server.chatters)
        direct = Door(
            "(a) direct",
            sdk_door(
                server.provider_urls["OPENAI_BASE_URL"],
                [server.provider_urls["OPENAI_API_KEY"]],
                DIRECT_BODY["model"],
            ),
            None,
            None,
        )
        proxied = Door(
            f"(b) LiteLLM {LITELLM_VERSION}",
            sdk_door(f"{litellm.base}/v1", [litellm.master_key], MODEL),
            litellm.pid,
            None,
        )
        messages = Door(
            "(d) chat message",
            message_door(server.base, server.chatters),
            server.base.pid,
            server.database,
        )
        floor = Door(
            "(e) floor",
            sdk_door(f"{floor_base}/v1", floor_bearers, MODEL),
            floor_base.pid,
            server.database,
        )
        doors = [direct, proxied, messages, floor]
        if keys:
            gateway = Door(
                "(c) /v1/chat/completions",
                sdk_door(f"{server.base}/v1", keys, MODEL),
                server.base.pid,
                server.database,
            )
            doors.insert(2, gateway)
        servers, databases = doors[1:], [door for door in doors if door.database]
        monitor = Monitor()
        load_before = os.getloadavg()
        took = latencies(doors, args.rounds)
        spent = throughputs(servers, args.seconds, args.throughput_rounds, monitor)
        transactions = transactions_per_call(databases, monitor)
        load_after = os.getloadavg()
        litellm_errors = litellm.errors()

    print(
        f"creditapp: gunicorn {WORKERS} workers x {THREADS} threads on PostgreSQL."
        f" LiteLLM {LITELLM_VERSION}: 1 uvicorn worker, no database. One fake provider,"
        " answering at once. (a)-(c), (e): openai.OpenAI chat.completions.create; (d):"
        " creditapp's message endpoint, JSON over http.client (the SDK cannot speak it); (e):"
        " bench/floor.py, the floor (Flask, the provider called as creditapp calls it, two"
        " one-statement transactions)."
    )
    print(
        f"Latency: {args.rounds} rounds, one client, order rotated. Throughput:"
        f" {args.throughput_rounds} x {args.seconds:g} s per door, {CLIENTS} clients."
        f" Transactions: {TRANSACTION_SAMPLE} calls, one client."
        f"{' A CPU hog on the other core.' if args.load else ''} Load average (1 min)"
        f" {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} CPUs."
    )
    print_table(doors, took, spent, transactions)
    if not keys:
        print("(c) /v1/chat/completions: pending, creditapp has no API keys yet")
    for door in databases:
        shares = sorted(spent[door.label].per_process.values(), reverse=True)
        print(
            f"{door.label}: CPU s of each gunicorn process (master last) over its phases: "
            + ", ".join(f"{cpu:.2f}" for cpu in shares)
        )
    print(
        f"LiteLLM's log: {len(litellm_errors)} error lines"
        + (f", e.g. {litellm_errors[0][:300]}" if litellm_errors else "")
    )


def print_table(
    doors: list[Door],
    took: dict[str, list[float]],
    spent: dict[str, Spent],
    transactions: dict[str, float],
) -> None:
    """Milliseconds, the CPU in seconds per 1,000 calls (= ms a call); what each door adds is
    its call's time minus the direct call's of the same round; ratios against LiteLLM."""
    direct, proxied = doors[0], doors[1]
    added = {
        door.label: [
            ms(call - alone)
            for call, alone in zip(took[door.label], took[direct.label], strict=True)
        ]
        for door in doors[1:]
    }
    added_median = {label: statistics.median(values) for label, values in added.items()}
    cpu = {label: phase.per_thousand(phase.server_cpu) for label, phase in spent.items()}
    print()
    print(
        f"{'':<24} {'latency ms':^15} {'added ms':^15} {'16 clients':>10}"
        f" {'CPU s per 1,000 calls':^23} {'xacts':>6}"
    )
    print(
        f"{'door':<24} {'median':>7} {'p95':>7} {'median':>7} {'p95':>7} {'calls/s':>10}"
        f" {'server':>7} {'(PG)':>7} {'client':>7} {'/call':>6}"
    )
    for door in doors:
        times = [ms(seconds) for seconds in took[door.label]]
        line = f"{door.label:<24} {statistics.median(times):7.2f} {percentile(times, 0.95):7.2f}"
        if door.label in spent:
            phase = spent[door.label]
            line += (
                f" {added_median[door.label]:7.2f}"
                f" {percentile(added[door.label], 0.95):7.2f} {phase.rate():10.1f}"
                f" {cpu[door.label]:7.2f}"
                + (
                    f" {phase.per_thousand(phase.database_cpu):7.2f}"
                    if door.database
                    else f" {'-':>7}"
                )
                + f" {phase.per_thousand(phase.client_cpu):7.2f}"
                + (f" {transactions[door.label]:6.2f}" if door.database else f" {'-':>6}")
            )
        print(line)
    print()
    for door in doors[2:]:
        print(
            f"{door.label} / {proxied.label}: added latency (median)"
            f" {added_median[door.label] / added_median[proxied.label]:.2f}, calls/s"
            f" {spent[door.label].rate() / spent[proxied.label].rate():.2f}, server CPU per call"
            f" {cpu[door.label] / cpu[proxied.label]:.2f}"
        )


def ms(seconds: float) -> float:
    return seconds * 1000


if __name__ == "__main__":
    main()
