"""Proof under fire: a chaos run of the whole service, scaled out on one machine as it would be
on several, that checks every invariant and every outcome a client saw.

Two web instances (gunicorn masters on ports of their own, several workers each), two Celery
workers, two beats (redbeat: one schedules, the other waits for its lock), one PostgreSQL and
one Redis reached through TCP proxies the run can cut, and the fake provider server speaking
each provider's wire format to the real SDKs.

Users chat (streamed and not, some hanging up early), admins grant, adjust and refund,
subscription periods end during the run, and users buy credits through Stripe Checkout (the
fake Stripe, its webhook endpoint one of the web instances). A team, made through the API
before the load, is funded by its members' transfers and the admin's grants while its capped
members spend from it, each on several connections at once, so that their calls meet their
cap together. Stripe takes each payment at once,
and its `checkout.session.completed` event reaches the service as Stripe's do at their worst:
once, twice, concurrently to both web instances, late (seconds later, once the buyer spent),
with the `async_payment_succeeded` twin of the same payment, after an asynchronous payment
settled, or never (the `sync-purchases` job, run every few seconds on purchases pending more
than five, must grant it). A delivery that fails (an instance killed, PostgreSQL cut) is
retried a few times with a delay, as Stripe does; one given up is lost like the others. A few
buyers never pay.

Every user's account and the team's have low-balance thresholds the run's spending crosses and
a webhook endpoint listening to every event type, each pointing at a receiver of its own on
loopback that verifies every signature (`tests/webhook_receiver.py`). For a stretch of the run
the receivers fail (the first requests hang past the delivery's timeout, then 500s) and
recover; the `deliver-webhooks` job runs every few seconds, on a retry schedule the outage
fits in.

A client retries every request whose outcome it did not learn (a dropped connection, a 503, a
409 "still in progress") with the same Idempotency-Key, as a careful client would, until it
learns it. Faults follow a schedule drawn from the seed and printed first (the same seed, the
same schedule): SIGKILL of web workers and masters, of Celery workers mid-job and of the beat
holding the lock (each restarted); PostgreSQL and Redis cut for seconds; the provider slow,
failing, or dying mid-stream.

At the end, after the jobs have caught up (purchases paid but pending included), the run
checks: reconciliation finds no drift; every answered message was charged exactly once and
exactly its cost; the ledger's charges, admin grants, adjustments and purchase grants of every
user equal what the clients learned (nothing charged for a refusal, nothing applied twice,
nothing missing), and so do the team account's charges (by member), transfers and grants,
and every member's transfers out; no member past cap (spent this period within the ceiling,
nothing left reserved, and spent equal to the member's charges on the team account this
period); every paid purchase granted exactly once (one purchase grant of its credits,
`grant_id` set, status paid, whichever of the webhook and the job came first) and none that
was not paid; every retried request has one outcome; no hold is pending; one subscription grant
per user and period, and a new one for every period that ended; every compensation paid at
most once (and every one paid); the metrics agree with the database; every committed event
delivered to its account's endpoint (none failed or pending once the deliveries caught up) and
received there with a valid signature, and none received twice under different webhook-ids (one
body under two ids, or an id the outbox never sent). It prints a table and "lost 0, doubled 0,
members past cap 0", or the counterexamples and the seed.

    make chaos            # or: .venv/bin/python bench/chaos.py [--seconds 300] [--seed N]

PG_ADMIN_URL says where PostgreSQL is (the run creates a database of its own and drops it), and
TEST_REDIS_URL the Redis database the run empties and uses (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from dateutil.relativedelta import relativedelta
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_providers import Answer, FakeProviders  # noqa: E402
from tests.fake_stripe import FakeStripe, event_body  # noqa: E402
from tests.integration.live_server import free_port  # noqa: E402
from tests.integration.tcp_proxy import TcpProxy  # noqa: E402
from tests.webhook_receiver import Answer as ReceiverAnswer  # noqa: E402
from tests.webhook_receiver import WebhookReceiver  # noqa: E402

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The run's Redis database, emptied first: TEST_REDIS_URL's, the one setting that decides every
# Redis database `make test` touches (its chaos step runs after the suite, never beside it).
REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
BIN = Path(sys.executable).parent
MICRO = 1_000_000
MODELS = {"openai": "gpt-chaos", "anthropic": "claude-chaos", "google": "gemini-chaos"}
WEBHOOK_PATH = "/api/webhooks/stripe"
HOLD_TTL_SECONDS = 40
BEAT_LOOP_SECONDS = 2
BEAT_LOCK_SECONDS = BEAT_LOOP_SECONDS * 5  # redbeat's lock timeout (creditapp.config)
# The jobs, often: the run is minutes long, and what it checks must have happened by its end.
JOB_PERIODS = {
    "REFRESH": 4,
    "COMPENSATIONS": 3,
    "EXPIRE_HOLDS": 3,
    "ROLLUP": 10,
    "EXPIRE_GRANTS": 6,
    "RECONCILE": 20,
    "PURGE_IDEMPOTENCY": 60,
    "SYNC_PURCHASES": 3,
    "DELIVER_WEBHOOKS": 2,
}
# A purchase whose event was lost is looked up in Stripe once it is this old.
PURCHASE_SYNC_AFTER_SECONDS = 5
# What users buy, in credits: Stripe refuses a Checkout below $0.50, and 10 credits cost a cent.
PURCHASE_CREDITS = range(500, 1001, 10)
# How Stripe's events for a payment reach the service, drawn for each purchase ("unpaid": the
# buyer left the Checkout page; nothing may be granted).
PAYMENTS = (
    "event once",
    "event twice",
    "event to both instances at once",
    "event late",
    "event and its async twin at once",
    "asynchronous payment, two events",
    "event lost",
    "unpaid",
)
# Stripe retries a delivery that failed: these many attempts, this much longer apart each time.
WEBHOOK_ATTEMPTS = 4
WEBHOOK_RETRY_SECONDS = 1.5
FAULT_KINDS = (
    "kill_web_worker",
    "kill_web_master",
    "kill_celery_worker",
    "kill_beat",
    "cut_postgres",
    "cut_redis",
    "provider_slow",
    "provider_failing",
    "provider_dies_mid_stream",
)
# A client gives up learning an outcome after this long: longer than a claim's takeover.
LEARN_DEADLINE_SECONDS = HOLD_TTL_SECONDS * 4
# The team: its members' monthly caps, in credits per 45 seconds of load (a message costs
# about 0.7): the smallest binds within a few messages, the largest late in the run, so that
# calls meet a cap throughout. Each member sends on this many connections at once, beside
# their personal chat.
MEMBER_CAPS = (1.5, 3, 8, 20)
TEAM_CONNECTIONS = 3
# Credits the admin grants the team first (its members' transfers add to it): more than the
# caps allow, so that the caps, not the balance, refuse the members' calls.
TEAM_FUNDING_OVER_CAPS = 20
TRANSFER_CENTS = range(50, 301)
# Signals out: each account's low-balance thresholds, these many credits below its available
# credits when the load starts (the first few are crossed within seconds, the last ones by the
# heavier spenders; a purchase re-arms them all).
ALERT_DROPS = ("0.2", "0.5", "1", "2", "4", "8", "16")
# Deliveries wait this long for the receiver's answer, and are retried after these delays (one
# first attempt, then one per entry): an outage of the receivers within their sum (with the
# delivery job's period between two attempts) is ridden out.
RECEIVER_TIMEOUT_SECONDS = 3
RECEIVER_RETRY_SCHEDULE = (1, 2, 3, 5, 8, 13, 21)
# The receivers fail for a stretch once a minute of load (at least once): each one's next
# requests hang (answered after the delivery gave up), then every request is answered 500 for
# this long, then they recover.
RECEIVER_HANGS = 2
RECEIVER_OUTAGE_SECONDS = 8
RECEIVER_OUTAGE_EVERY = 60


def credits(text: str) -> int:
    """A credit string of the API as micro-credits."""
    return int(Decimal(text) * MICRO)


# ----------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    kind: str
    seconds: float  # how long it lasts (a cut, a slow provider) or until the restart


def fault_schedule(seed: int, duration: float, every: float) -> list[Fault]:
    """Faults about `every` seconds apart over the run, each kind in turn at first, then drawn
    at random: the same seed gives the same schedule."""
    draw = random.Random(seed)
    faults, moment = [], every / 2
    kinds = list(FAULT_KINDS)
    draw.shuffle(kinds)
    while moment < duration - 5:
        kind = kinds.pop() if kinds else draw.choice(FAULT_KINDS)
        faults.append(Fault(round(moment, 1), kind, round(draw.uniform(2, 5), 1)))
        moment += draw.uniform(every * 0.5, every * 1.5)
    return faults


# -------------------------------------------------------------------------------- processes


class Service:
    """A process of the deployment, in a session of its own so that a kill takes its children
    too; restarted with the same command. Its output goes to a log file per start."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path):
        self.name, self.command, self.env, self.logs = name, command, env, logs
        self.starts = 0
        self.exits = 0  # ended on their own (not by a fault): the supervisor restarted them
        self.held_down = False  # killed by a fault, restarted by the fault's end
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = logs / f"{name}.log"

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.logs / f"{self.name}.{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children, as a machine losing power would."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def children(self) -> list[int]:
        if not self.alive:
            return []
        assert self.process is not None
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class WebInstance(Service):
    """A gunicorn master and its workers. What its workers counted is kept when it is killed:
    its restart empties its metrics directory, as a restarted machine's would be."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, workers: int, threads: int):
        self.port = free_port()
        self.metrics_dir = logs / f"{name}-metrics"
        command = [
            str(BIN / "gunicorn"),
            "--config",
            str(ROOT / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "wsgi:app",
        ]
        super().__init__(
            name, command, {**env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}, logs
        )
        self.retired: Counter[str] = Counter()

    def start(self) -> None:
        if self.metrics_dir.exists():  # a restart: gunicorn empties the directory first
            self.retired.update(metric_totals(read_metrics_dir(self.metrics_dir)))
        super().start()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start: see {self.log_path}")


def read_metrics_dir(path: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


METRIC_SUMS: dict[str, tuple[str, set[str] | None]] = {
    "credits": ("creditapp_credits_charged_microcredits", None),
    "answered": ("creditapp_messages", {"charged", "client_closed", "refunded"}),
}


def metric_totals(text: str) -> Counter[str]:
    """The sums the run compares with the database, from a metrics page."""
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for name, (metric, outcomes) in METRIC_SUMS.items():
            if family.name != metric:
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                if outcomes is None or sample.labels.get("outcome") in outcomes:
                    totals[name] += int(sample.value)
    return totals


# ------------------------------------------------------------------------------- deployment


@dataclass
class Seeded:
    admin_token: str
    users: list[User]


@dataclass
class User:
    index: int
    id: int
    account_id: int
    token: str
    conversations: list[int]
    period_ends: datetime | None  # when the subscription period ends during the run
    poor: bool  # few credits, no starting grant: meets 402 (and buys nothing)


@dataclass
class Listener:
    """An account's webhook endpoint and the receiver it points at (which knows its secret)."""

    who: str  # "user 3", "team"
    account_id: int
    endpoint_id: int
    receiver: WebhookReceiver


@dataclass
class Team:
    id: int
    account_id: int
    owner: User  # manages the team, funds it, spends nothing from it
    members: list[User]  # each capped, each spending from the team
    caps: dict[int, int]  # each member's ceiling (µcr) by user id, as the API answered it


class Deployment:
    """Everything the run starts, and stops at the end (the database is dropped)."""

    def __init__(self, args: argparse.Namespace, logs: Path):
        self.args, self.logs = args, logs
        self.database = f"creditapp_chaos_{secrets.token_hex(3)}"
        self.direct_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.database}"
        database = urlsplit(PG_ADMIN_URL)
        self.pg_proxy = TcpProxy(database.hostname or "127.0.0.1", database.port or 5432)
        self.redis_proxy = TcpProxy.in_front_of(REDIS_URL)
        self.provider = FakeProviders()
        self.provider.piece_delay = 0.02
        self.stripe = FakeStripe()
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
            **self.provider.base_urls(),
            **self.stripe.environment(),
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            "PURCHASE_MIN_CREDITS": str(PURCHASE_CREDITS.start),
            "PURCHASE_SYNC_AFTER_SECONDS": str(PURCHASE_SYNC_AFTER_SECONDS),
            # Production's settings but for one: its start refuses WEBHOOK_ALLOW_PRIVATE, which
            # the receivers on loopback need (the two differ in nothing else but the checks
            # ProductionConfig makes at start).
            "CREDITAPP_ENV": "development",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_TIMEOUT_SECONDS": str(RECEIVER_TIMEOUT_SECONDS),
            "WEBHOOK_RETRY_SCHEDULE": ",".join(map(str, RECEIVER_RETRY_SCHEDULE)),
            "JWT_SECRET_KEY": secrets.token_hex(32),
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/{self.database}",
            "REDIS_URL": self.redis_proxy.url,
            "HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
            "PROVIDER_TIMEOUT_SECONDS": "5",
            "PROVIDER_MAX_RETRIES": "0",
            "BEAT_MAX_LOOP_SECONDS": str(BEAT_LOOP_SECONDS),
            "COMPENSATION_BASE_DELAY_SECONDS": "1",
            "CELERY_VISIBILITY_TIMEOUT": "20",
            "DATABASE_POOL_SIZE": "4",
            "DATABASE_MAX_OVERFLOW": "8",
            "STREAM_KEEPALIVE_SECONDS": "5",
            **{f"JOB_PERIOD_{job}_SECONDS": str(seconds) for job, seconds in JOB_PERIODS.items()},
        }
        self.web = [
            WebInstance(f"web{n}", self.env, logs, args.web_workers, args.web_threads)
            for n in (1, 2)
        ]
        self.stripe.webhook_url = f"http://127.0.0.1:{self.web[0].port}{WEBHOOK_PATH}"
        celery = [str(BIN / "celery"), "-A", "celery_worker:celery"]
        self.workers = [
            Service(
                f"worker{n}",
                [*celery, "worker", "--concurrency", "2", "-n", f"chaos{n}@%h", "-l", "INFO"],
                self.env,
                logs,
            )
            for n in (1, 2)
        ]
        self.beats = [
            Service(f"beat{n}", [*celery, "beat", "-l", "INFO"], self.env, logs) for n in (1, 2)
        ]
        self.listeners: list[Listener] = []  # made through the API before the load (`listen`)

    @property
    def services(self) -> list[Service]:
        return [*self.web, *self.workers, *self.beats]

    def supervise(self, stop: threading.Event) -> None:
        """What systemd (Restart=always) does in production: a process that ended on its own
        is started again. (A beat exits when Redis goes away under it.)"""
        while not stop.wait(0.5):
            for service in self.services:
                if not service.alive and not service.held_down:
                    service.exits += 1
                    service.start()

    def lock_acquisitions(self) -> int:
        """How many times any beat acquired redbeat's lock, over every start's log."""
        return sum(
            log.read_text(errors="replace").count("beat: Acquired lock")
            for log in self.logs.glob("beat*.log")
        )

    def beat_holding_the_lock(self) -> Service | None:
        """The live beat that acquired redbeat's lock since it started (the other one waits)."""
        for beat in self.beats:
            if beat.alive and "beat: Acquired lock" in beat.log_path.read_text(errors="replace"):
                return beat
        return None

    def start(self) -> Seeded:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        redis.Redis.from_url(REDIS_URL).flushdb()
        migrated = subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT,
            env={**self.env, "DATABASE_URL": self.direct_url},
            capture_output=True,
        )
        if migrated.returncode:
            raise SystemExit(migrated.stderr.decode())
        seeded = seed(self.direct_url, self.env["JWT_SECRET_KEY"], self.args)
        for service in self.services:
            service.start()
        for web in self.web:
            web.wait_ready()
        return seeded

    def close(self, *, keep_database: bool) -> None:
        for service in self.services:
            service.stop()
        self.provider.close()
        self.stripe.close()
        for listener in self.listeners:
            listener.receiver.close()
        self.pg_proxy.close()
        self.redis_proxy.close()
        if keep_database:
            print(f"database kept for a look: {self.direct_url}")
            return
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def seed(url: str, jwt_secret: str, args: argparse.Namespace) -> Seeded:
    """Tiers without rate limits in the way, priced models, an admin, and users with
    conversations: some with few credits (they meet 402), some whose period ends mid-run."""
    os.environ.update(DATABASE_URL=url, JWT_SECRET_KEY=jwt_secret)
    os.environ.pop("REDIS_URL", None)
    from creditapp import accounts, create_app, ledger
    from creditapp.auth import tiers, users
    from creditapp.auth.tokens import issue_access_token
    from creditapp.chat import service
    from creditapp.database import write_transaction
    from creditapp.extensions import db
    from creditapp.pricing import book

    app = create_app()
    context = ledger.AuditContext(actor_type="system", actor_id="chaos")
    now = datetime.now(UTC)
    generous = {kind: "100000 per minute" for kind in ("default", "spending", "sensitive")}
    draw = random.Random(args.seed)
    chosen: list[User] = []
    with app.app_context():
        with write_transaction(db.session):
            for name, monthly in (("chaos", 20 * MICRO), ("chaos-poor", MICRO // 2)):
                tiers.put(
                    db.session,
                    name=name,
                    monthly_credits=monthly,
                    allowed_models=["*"],
                    default_max_tokens=64,
                    max_max_tokens=256,
                    rate_limits=generous,
                    context=context,
                    now=now,
                )
            for provider, model in MODELS.items():
                book.add(
                    db.session,
                    provider=provider,
                    model=model,
                    rates=book.Rates(Decimal("1"), Decimal("2"), Decimal("0.5"), Decimal("1.25")),
                    effective_from=now - timedelta(days=62),
                    source="chaos",
                    context=context,
                    now=now,
                )
            admin = users.create(
                db.session,
                email="admin@chaos.example",
                role="admin",
                tier_name="chaos",
                context=context,
                now=now,
            )
            characters = [
                service.create_character(
                    db.session,
                    owner=admin,
                    name=f"Chaos {provider}",
                    system_prompt="Be brief.",
                    provider=provider,
                    model=model,
                    public=True,
                    context=context,
                    now=now,
                )
                for provider, model in MODELS.items()
            ]
            admin_token = issue_access_token(
                db.session, admin, now=now, expires_in=timedelta(hours=3)
            )
        for index in range(args.users):
            poor = index % 6 == 5
            # A third of the users: the period ends in the middle of the run.
            period_ends = (
                now + timedelta(seconds=args.seconds * draw.uniform(0.3, 0.7))
                if index % 3 == 1
                else None
            )
            created = period_ends - relativedelta(months=1) if period_ends else now
            with write_transaction(db.session):
                user = users.create(
                    db.session,
                    email=f"user{index}@chaos.example",
                    tier_name="chaos-poor" if poor else "chaos",
                    context=context,
                    now=created,
                )
                account_id = accounts.of_user(db.session, user.id)
                if not poor:
                    # Not a purchase: the run's purchases are checked against Stripe's payments.
                    ledger.grant(
                        db.session,
                        account_id=account_id,
                        amount=30 * MICRO,
                        source="promo",
                        reason="chaos",
                        context=context,
                        now=now,
                    )
                conversations = [
                    service.create_conversation(
                        db.session, user=user, character_id=character.id, now=now
                    ).id
                    for character in characters
                ]
                token = issue_access_token(db.session, user, now=now, expires_in=timedelta(hours=3))
            chosen.append(User(index, user.id, account_id, token, conversations, period_ends, poor))
        db.session.remove()
    return Seeded(admin_token, chosen)


# ---------------------------------------------------------------------------------- clients


@dataclass
class Outcome:
    """What a client finally learned of one request (one Idempotency-Key)."""

    kind: str  # message, grant, adjust, refund, purchase, transfer
    user: int  # the user's index
    key: str
    status: int = 0  # the definitive answer's status (200 for a stream)
    code: str | None = None  # the error code, or the stream's last event
    charged: int = 0  # micro-credits: a message's credits_charged
    amount: int = 0  # micro-credits granted or adjusted; a purchase's once Stripe was paid
    message_id: int | None = None
    purchase_id: int | None = None
    attempts: int = 0
    hung_up: bool = False  # the client closed a stream early on purpose, then asked again
    server_errors: list[int] = field(default_factory=list)  # 5xx other than 502/503 seen
    team: bool = False  # paid from (a message) or paid to (a grant) the team's account

    @property
    def label(self) -> str:
        return f"team {self.kind}" if self.team else self.kind


class Unlearned(Exception):
    """The answer said nothing definitive (no answer, 503, still in progress): ask again."""


class Clients:
    """The load: users chatting and buying credits, an admin granting, adjusting and refunding.
    Every request is retried with its key until its outcome is learned, on either web instance;
    Stripe's events are delivered as Stripe would, and retried as it does."""

    def __init__(self, deployment: Deployment, seeded: Seeded, seed: int):
        self.provider = deployment.provider
        self.stripe = deployment.stripe
        self.direct_url = deployment.direct_url
        self.web_ports = [web.port for web in deployment.web]
        # Stripe's side: how each paid purchase's events came, what the webhook answered
        # (deliveries retried or given up too), and answers other than 200, 502 and 503.
        self.payments: Counter[str] = Counter()
        self.webhook_answers: Counter[str] = Counter()
        self.webhook_failures: list[str] = []
        self.deliveries: list[threading.Thread] = []
        self.seeded = seeded
        self.outcomes: list[Outcome] = []
        self.unlearned: list[Outcome] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.seed = seed
        self.answered_messages: list[Outcome] = []
        # The instances requests go to (the warm-up measures one, then both).
        self.ports_in_use = [web.port for web in deployment.web]
        self.team: Team | None = None  # formed before the load (`form_team`)

    # One POST (or `method`), on instance `attempt % 2`: (status, parsed body or stream events).
    def _request(
        self,
        attempt: int,
        path: str,
        token: str,
        key: str,
        body: dict[str, Any],
        *,
        hang_up: bool = False,
        method: str = "POST",
    ) -> tuple[int, Any]:
        port = self.ports_in_use[attempt % len(self.ports_in_use)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            connection.request(
                method,
                path,
                body=json.dumps(body),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                },
            )
            response = connection.getresponse()
            if response.status == 200 and "event-stream" in (
                response.getheader("Content-Type") or ""
            ):
                return 200, read_events(response, hang_up=hang_up)
            return response.status, json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as error:
            raise Unlearned(str(error)) from error
        finally:
            connection.close()

    def learn(
        self,
        outcome: Outcome,
        path: str,
        token: str,
        body: dict[str, Any],
        *,
        hang_up: bool = False,
        method: str = "POST",
    ) -> tuple[int, Any] | None:
        """POST (or `method`) until a definitive answer; None if none came before the deadline."""
        deadline = time.monotonic() + LEARN_DEADLINE_SECONDS
        first = random.randrange(2)
        while time.monotonic() < deadline:
            attempt = outcome.attempts
            outcome.attempts += 1
            try:
                status, answer = self._request(
                    first + attempt,
                    path,
                    token,
                    outcome.key,
                    body,
                    hang_up=hang_up and attempt == 0,
                    method=method,
                )
            except Unlearned:
                time.sleep(min(0.2 * outcome.attempts, 2))
                continue
            if status >= 500 and status not in (502, 503):
                outcome.server_errors.append(status)
            if status == 200 and isinstance(answer, list) and not answer_finished(answer):
                time.sleep(0.2)  # a stream cut short: ask again, the replay tells the end
                continue
            if status == 200 and isinstance(answer, list) and stream_unsettled(answer):
                # The charge could not be confirmed (the database went away as it was written):
                # as after a 503, the same key again tells how it ended.
                time.sleep(min(0.3 * outcome.attempts, 3))
                continue
            code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
            if status in (503, 500) or code == "request_in_progress":
                time.sleep(min(0.3 * outcome.attempts, 3))
                continue
            outcome.status, outcome.code = status, code
            return status, answer
        return None

    def record(self, outcome: Outcome, learned: bool) -> None:
        with self.lock:
            (self.outcomes if learned else self.unlearned).append(outcome)

    def chat(self, user: User, team_connection: int | None = None) -> None:
        """A user's messages, one at a time: paid by their account, or with `team_connection`
        (one of a member's several at once) by the team's."""
        team = self.team if team_connection is not None else None
        draw = random.Random(
            f"{self.seed}-{user.index}" + (f"-team{team_connection}" if team else "")
        )
        while not self.stop.is_set():
            stream = draw.random() < 0.5
            hang_up = stream and draw.random() < 0.15
            conversation = draw.choice(user.conversations)
            outcome = Outcome(
                "message", user.index, f"m-{uuid.uuid4()}", hung_up=hang_up, team=bool(team)
            )
            body: dict[str, Any] = {
                "content": f"Tell me something, {draw.randrange(10**6)}",
                "stream": stream,
            }
            if team:
                body["team_id"] = str(team.id)
            learned = self.learn(
                outcome,
                f"/api/conversations/{conversation}/messages",
                user.token,
                body,
                hang_up=hang_up,
            )
            if learned is not None:
                status, answer = learned
                if status == 200:  # streamed: the last event says how it ended
                    name, data = answer[-1]
                    outcome.code = name
                    outcome.charged = credits(data.get("credits_charged", "0"))
                    outcome.message_id = stream_message_id(answer)
                elif status == 201:
                    outcome.charged = credits(answer["credits_charged"])
                    outcome.message_id = int(answer["message"]["id"])
                else:
                    details = answer.get("error", {}).get("details") or {}
                    outcome.charged = credits(details.get("credits_charged", "0"))
                if outcome.message_id is not None and outcome.code in (None, "done"):
                    with self.lock:
                        self.answered_messages.append(outcome)
            self.record(outcome, learned is not None)
            # A 402 is shown to the person, who does not send again at once.
            refused = outcome.status == 402
            time.sleep(draw.uniform(1, 2) if refused else draw.uniform(0.05, 0.3))

    def administer(self) -> None:
        draw = random.Random(f"{self.seed}-admin")
        token = self.seeded.admin_token
        while not self.stop.is_set():
            user = draw.choice(self.seeded.users)
            kind = draw.choice(("grant", "adjust", "adjust", "refund", "team grant"))
            if kind == "team grant":
                self.record(*self.grant_team(Decimal(draw.randrange(1, 300)) / 100))
            elif kind in ("grant", "adjust"):
                outcome = Outcome(kind, user.index, f"a-{uuid.uuid4()}")
                cents = draw.randrange(1, 300) if kind == "grant" else draw.randrange(-200, 200)
                learned = self.learn(
                    outcome,
                    f"/api/admin/credit/{kind}",
                    token,
                    {
                        "user_id": str(user.id),
                        "amount": str(Decimal(cents or 1) / 100),
                        "reason": "chaos",
                    },
                )
                if learned and learned[0] in (200, 201):
                    answer = learned[1]
                    done = answer["grant"] if kind == "grant" else answer
                    outcome.amount = credits(done["amount"])
                self.record(outcome, learned is not None)
            else:
                outcome = Outcome(kind, user.index, f"a-{uuid.uuid4()}")
                with self.lock:
                    answered = [o for o in self.answered_messages if o.user == user.index]
                    target = draw.choice(answered) if answered else None
                    if target is not None:
                        self.answered_messages.remove(target)
                if target is None:
                    continue
                learned = self.learn(
                    outcome,
                    "/api/admin/credit/refund",
                    token,
                    {"message_id": str(target.message_id), "reason": "chaos"},
                )
                self.record(outcome, learned is not None)
            time.sleep(draw.uniform(0.2, 0.6))

    def grant_team(self, amount: Decimal) -> tuple[Outcome, bool]:
        """The admin grants the team `amount` credits: the outcome, and whether it was learned."""
        assert self.team is not None
        outcome = Outcome("grant", self.team.owner.index, f"a-{uuid.uuid4()}", team=True)
        learned = self.learn(
            outcome,
            "/api/admin/credit/grant",
            self.seeded.admin_token,
            {"team_id": str(self.team.id), "amount": str(amount), "reason": "chaos"},
        )
        if learned and learned[0] == 201:
            outcome.amount = credits(learned[1]["grant"]["amount"])
        return outcome, learned is not None

    def form_team(self, seconds: float) -> Team:
        """Before the load, through the API: a user with credits makes a team, adds the next
        ones as members with the caps of `MEMBER_CAPS` (scaled to the run's length), and the
        admin funds it."""
        spenders = [user for user in self.seeded.users if not user.poor]
        owner, members = spenders[0], spenders[1 : 1 + len(MEMBER_CAPS)]

        def made(path: str, body: dict[str, Any]) -> Any:
            learned = self.learn(
                Outcome("team", owner.index, f"t-{uuid.uuid4()}"), path, owner.token, body
            )
            if learned is None or learned[0] != 201:
                raise SystemExit(f"forming the team: {path} answered {learned}")
            return learned[1]

        team_id = int(made("/api/teams", {"name": "Chaos team"})["id"])
        scale = max(1.0, seconds / 45)
        caps = {
            member.id: credits(
                made(
                    f"/api/teams/{team_id}/members",
                    {
                        "email": f"user{member.index}@chaos.example",
                        "cap": str(round(Decimal(credits_per_45 * scale), 2)),
                        "cap_period": "month",
                    },
                )["cap"]
            )
            for member, credits_per_45 in zip(members, MEMBER_CAPS, strict=False)
        }
        with psycopg.connect(self.direct_url) as database:
            ((account_id,),) = database.execute(
                "SELECT id FROM accounts WHERE team_id = %s", (team_id,)
            ).fetchall()
        self.team = Team(team_id, account_id, owner, members, caps)
        funding = Decimal(sum(caps.values())) / MICRO + TEAM_FUNDING_OVER_CAPS
        outcome, learned = self.grant_team(funding)
        if outcome.status != 201:
            raise SystemExit(f"funding the team: {describe(outcome)}")
        self.record(outcome, learned)
        return self.team

    def listen(self) -> list[Listener]:
        """Before the load, through the API: every user's account and the team's get
        thresholds `ALERT_DROPS` below their available credits and an endpoint listening to
        every event type, pointing at a receiver of its own (given the secret the 201 shows)."""
        from creditapp.signals.models import EVENT_TYPES

        assert self.team is not None
        accounts: list[tuple[str, User, int, int | None]] = [
            (f"user {user.index}", user, user.account_id, None) for user in self.seeded.users
        ]
        accounts.append(("team", self.team.owner, self.team.account_id, self.team.id))
        with psycopg.connect(self.direct_url, autocommit=True) as database:
            available: dict[int, int] = dict(
                database.execute(
                    "SELECT id, balance - reserved FROM accounts WHERE id = ANY(%s)",
                    ([account_id for _, _, account_id, _ in accounts],),
                ).fetchall()
            )
        listeners = []
        for who, user, account_id, team_id in accounts:
            on = {"team_id": None if team_id is None else str(team_id)}
            start = Decimal(available[account_id]) / MICRO
            thresholds = [
                str(start - Decimal(drop)) for drop in ALERT_DROPS if start > Decimal(drop)
            ]
            self._made(
                who, user, "PUT", "/api/credit/alerts", {**on, "thresholds": thresholds}, 200
            )
            receiver = WebhookReceiver()
            endpoint = self._made(
                who,
                user,
                "POST",
                "/api/webhook-endpoints",
                {
                    **on,
                    "url": receiver.url(f"/hooks/{who.replace(' ', '-')}"),
                    "events": list(EVENT_TYPES),
                },
                201,
            )
            # The secret is in the first answer only: a retried creation's replay leaves it out.
            if "secret" not in endpoint:
                raise SystemExit(f"signals of {who}: the endpoint's answer came without its secret")
            receiver.secret = endpoint["secret"]
            listeners.append(Listener(who, account_id, int(endpoint["id"]), receiver))
        return listeners

    def _made(
        self, who: str, user: User, method: str, path: str, body: dict[str, Any], status: int
    ) -> Any:
        """What `user` set up for `who` before the load: its answer, which must be `status`."""
        learned = self.learn(
            Outcome("signals", user.index, f"s-{uuid.uuid4()}"),
            path,
            user.token,
            body,
            method=method,
        )
        if learned is None or learned[0] != status:
            raise SystemExit(f"signals of {who}: {method} {path} answered {learned}")
        return learned[1]

    def fund_team(self) -> None:
        """The team's owner and members move credits of their own to it now and then."""
        assert self.team is not None
        draw = random.Random(f"{self.seed}-transfers")
        funders = [self.team.owner, *self.team.members]
        while not self.stop.wait(draw.uniform(0.5, 2)):
            user = draw.choice(funders)
            outcome = Outcome("transfer", user.index, f"x-{uuid.uuid4()}")
            learned = self.learn(
                outcome,
                f"/api/teams/{self.team.id}/transfers",
                user.token,
                {"amount": str(Decimal(draw.choice(TRANSFER_CENTS)) / 100)},
            )
            if learned and learned[0] == 201:
                outcome.amount = credits(learned[1]["amount"])
            self.record(outcome, learned is not None)

    def bill_empty_replies(self) -> None:
        """Now and then a provider bills a call and answers nothing: the message is charged as
        billed and refunded at once (a compensation)."""
        draw = random.Random(f"{self.seed}-empty")
        while not self.stop.wait(draw.uniform(3, 8)):
            self.provider.script(draw.choice(list(MODELS)), Answer(text=""))

    def buy(self) -> None:
        """Users buy credits now and then, and keep chatting. Once the purchase is learned,
        Stripe takes the payment (or the buyer leaves), and its events are delivered as drawn
        (`PAYMENTS`), in a thread of their own: a late one comes after the buyer spent."""
        draw = random.Random(f"{self.seed}-buyers")
        buyers = [user for user in self.seeded.users if not user.poor]
        with psycopg.connect(self.direct_url, autocommit=True) as database:
            while not self.stop.wait(draw.uniform(0.5, 1.5)):
                user = draw.choice(buyers)
                bought = draw.choice(PURCHASE_CREDITS)
                outcome = Outcome("purchase", user.index, f"p-{uuid.uuid4()}")
                learned = self.learn(
                    outcome, "/api/credit/purchases", user.token, {"credits": str(bought)}
                )
                payment = draw.choice(PAYMENTS)
                if learned is not None and learned[0] == 201 and payment != "unpaid":
                    outcome.purchase_id = int(learned[1]["id"])
                    ((session_id,),) = database.execute(
                        "SELECT checkout_session_id FROM purchases WHERE id = %s",
                        (outcome.purchase_id,),
                    ).fetchall()
                    outcome.amount = bought * MICRO
                    with self.lock:
                        self.payments[payment] += 1
                    delivery = threading.Thread(
                        target=self.pay, args=(session_id, payment, draw.random())
                    )
                    delivery.start()
                    self.deliveries.append(delivery)
                self.record(outcome, learned is not None)

    def pay(self, session_id: str, payment: str, seed: float) -> None:
        """Stripe takes the payment of a session, then sends its events as `payment` says."""
        draw = random.Random(seed)
        if payment == "asynchronous payment, two events":
            self.deliver(self.stripe.pay(session_id, asynchronous=True, deliver=False), draw)
            time.sleep(draw.uniform(0.5, 4))  # the bank settles
            self.deliver(self.stripe.settle_async(session_id, deliver=False), draw)
            return
        completed = self.stripe.pay(session_id, deliver=False)
        if payment == "event lost":
            return
        if payment == "event late":
            # Either side of the sync job's first look at the purchase.
            time.sleep(draw.uniform(2, 10))
        if payment == "event twice":
            self.deliver(completed, draw)
            self.deliver(completed, draw)
            return
        twin = {**completed, "id": f"evt_{secrets.token_hex(12)}"}
        twin["type"] = "checkout.session.async_payment_succeeded"
        together = {
            "event to both instances at once": [(completed, 0), (completed, 1)],
            "event and its async twin at once": [(completed, 0), (twin, 1)],
        }.get(payment)
        if together is None:
            self.deliver(completed, draw)
            return
        posts = [
            threading.Thread(target=self.deliver, args=(event, draw, first))
            for event, first in together
        ]
        for post in posts:
            post.start()
        for post in posts:
            post.join()

    def deliver(self, event: dict[str, Any], draw: random.Random, first: int | None = None) -> None:
        """POST an event as Stripe does (its exact bytes, signed now), through a load balancer
        that sends each attempt to the next instance (the first: `first`, or drawn); a failed
        delivery (no answer, a 5xx) is tried `WEBHOOK_ATTEMPTS` times at most, then given up."""
        body = event_body(event)
        start = draw.randrange(2) if first is None else first
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                time.sleep(WEBHOOK_RETRY_SECONDS * attempt)
            port = self.web_ports[(start + attempt) % len(self.web_ports)]
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            try:
                connection.request(
                    "POST",
                    WEBHOOK_PATH,
                    body=body,
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": self.stripe.sign(body),
                    },
                )
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                continue
            finally:
                connection.close()
            if response.status == 200:
                with self.lock:
                    self.webhook_answers[answer.get("outcome", "?")] += 1
                    if attempt:
                        self.webhook_answers["(delivered on a retry)"] += 1
                return
            if response.status not in (502, 503):
                with self.lock:
                    self.webhook_failures.append(
                        f"event {event['id']} ({event['type']}): HTTP {response.status} {answer}"
                    )
                if response.status < 500:
                    return  # refused: Stripe would retry in vain
        with self.lock:
            self.webhook_answers["(given up after every retry)"] += 1

    def finish_deliveries(self) -> None:
        """Wait for Stripe's last events: a late one, and retries."""
        for delivery in self.deliveries:
            delivery.join()

    @contextmanager
    def running(self, users: list[User]) -> Iterator[None]:
        threads = [threading.Thread(target=self.chat, args=(user,)) for user in users]
        if self.team is not None:
            threads += [
                threading.Thread(target=self.chat, args=(member, connection))
                for member in self.team.members
                for connection in range(TEAM_CONNECTIONS)
            ]
            threads.append(threading.Thread(target=self.fund_team))
        threads += [
            threading.Thread(target=self.administer),
            threading.Thread(target=self.bill_empty_replies),
            threading.Thread(target=self.buy),
        ]
        self.stop.clear()
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()


def read_events(response: http.client.HTTPResponse, *, hang_up: bool) -> list[tuple[str, Any]]:
    """A stream's events as (name, data); with `hang_up`, only up to its first word."""
    events: list[tuple[str, Any]] = []
    name, data = "", ""
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and name:
            events.append((name, json.loads(data)))
            if hang_up and name == "delta":
                return events
            name = ""
    return events


def answer_finished(events: list[tuple[str, Any]]) -> bool:
    return bool(events) and events[-1][0] in ("done", "error")


def stream_unsettled(events: list[tuple[str, Any]]) -> bool:
    name, data = events[-1]
    return name == "error" and data["error"]["code"] == "service_unavailable"


def stream_message_id(events: list[tuple[str, Any]]) -> int | None:
    for name, data in events:
        if name == "message":
            return int(data["id"])
    return None


# ------------------------------------------------------------------------------ the faults


class Injector:
    """Carries out the schedule against the deployment, printing each fault as it starts."""

    def __init__(self, deployment: Deployment, schedule: list[Fault], seed: int):
        self.deployment = deployment
        self.schedule = schedule
        self.draw = random.Random(f"{seed}-targets")
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        # For each beat killed holding the lock: did a beat take the lock over in time?
        self.takeovers: list[bool] = []
        self.watching: list[threading.Thread] = []
        self.stop = threading.Event()

    def run(self, started: float) -> None:
        for fault in self.schedule:
            if self.stop.wait(max(0.0, started + fault.at - time.monotonic())):
                return
            done = getattr(self, fault.kind)(fault.seconds)
            (self.injected if done else self.skipped)[fault.kind] += 1
            print(
                f"  {time.monotonic() - started:6.1f} s  {fault.kind}"
                f"{'' if done else ' (nothing to do)'}",
                flush=True,
            )

    def _restart_later(self, service: Service, seconds: float) -> None:
        def restart() -> None:
            time.sleep(seconds)
            service.start()
            service.held_down = False

        service.held_down = True
        threading.Thread(target=restart, daemon=True).start()

    def kill_web_worker(self, _seconds: float) -> bool:
        workers = [pid for web in self.deployment.web for pid in web.children()]
        if not workers:
            return False
        with suppress(ProcessLookupError):
            os.kill(self.draw.choice(workers), signal.SIGKILL)  # the master starts another
        return True

    def kill_web_master(self, seconds: float) -> bool:
        alive = [web for web in self.deployment.web if web.alive]
        if len(alive) < 2:
            return False  # one instance stays up: the clients' other door
        web = self.draw.choice(alive)
        web.held_down = True
        web.kill()
        self._restart_later(web, seconds)
        return True

    def kill_celery_worker(self, seconds: float) -> bool:
        alive = [worker for worker in self.deployment.workers if worker.alive]
        if not alive:
            return False
        worker = self.draw.choice(alive)
        worker.held_down = True
        worker.kill()
        self._restart_later(worker, seconds)
        return True

    def kill_beat(self, seconds: float) -> bool:
        # Right after a beat died, the lock is nobody's until it times out: wait for a holder.
        deadline = time.monotonic() + 15
        while (holder := self.deployment.beat_holding_the_lock()) is None:
            if time.monotonic() > deadline or self.stop.wait(0.5):
                return False
        acquired_before = self.deployment.lock_acquisitions()
        holder.held_down = True
        holder.kill()
        self._restart_later(holder, seconds)

        def taken_over() -> None:
            # The dead holder's lock times out, then a waiting beat takes it within a loop.
            deadline = time.monotonic() + BEAT_LOCK_SECONDS + 3 * BEAT_LOOP_SECONDS + 10
            while time.monotonic() < deadline:
                if self.deployment.lock_acquisitions() > acquired_before:
                    self.takeovers.append(True)
                    return
                time.sleep(0.5)
            self.takeovers.append(False)

        watch = threading.Thread(target=taken_over, daemon=True)
        watch.start()
        self.watching.append(watch)
        return True

    def _cut(self, proxy: TcpProxy, seconds: float) -> bool:
        proxy.cut()
        threading.Timer(seconds, proxy.restore).start()
        return True

    def cut_postgres(self, seconds: float) -> bool:
        return self._cut(self.deployment.pg_proxy, seconds)

    def cut_redis(self, seconds: float) -> bool:
        return self._cut(self.deployment.redis_proxy, seconds)

    def provider_slow(self, seconds: float) -> bool:
        provider = self.deployment.provider
        provider.delay = 2.0
        threading.Timer(seconds, lambda: setattr(provider, "delay", 0.0)).start()
        return True

    def provider_failing(self, _seconds: float) -> bool:
        for name in MODELS:
            self.deployment.provider.script(name, *[Answer(status=500)] * 4)
        return True

    def provider_dies_mid_stream(self, _seconds: float) -> bool:
        text = " ".join(f"word{n}" for n in range(12))
        for name in MODELS:
            self.deployment.provider.script(name, *[Answer(text=text, fail_after=3)] * 3)
        return True


def receiver_outages(seconds: float) -> list[float]:
    """When the receivers' outages start (seconds after the load starts): one a minute, the
    first early enough in a short run that its retries are delivered within the load."""
    starts, moment = [], 0.3 * min(seconds, RECEIVER_OUTAGE_EVERY)
    while moment + RECEIVER_TIMEOUT_SECONDS + RECEIVER_OUTAGE_SECONDS < seconds - 5:
        starts.append(round(moment, 1))
        moment += RECEIVER_OUTAGE_EVERY
    return starts or [0.0]


def fail_receivers(
    listeners: list[Listener], starts: list[float], started: float, stop: threading.Event
) -> None:
    """At each start: each receiver's next requests hang (answered only once the delivery gave
    up waiting), then every request is answered 500 for `RECEIVER_OUTAGE_SECONDS`, then they
    recover. (A receiver that met fewer requests than its hangs meanwhile hangs the next ones:
    a few more failures, retried as the others.)"""
    receivers = [listener.receiver for listener in listeners]
    for start in starts:
        if stop.wait(max(0.0, started + start - time.monotonic())):
            return
        print(
            f"  {time.monotonic() - started:6.1f} s  receivers failing: {RECEIVER_HANGS} hangs,"
            f" then 500s for {RECEIVER_OUTAGE_SECONDS} s",
            flush=True,
        )
        hang = ReceiverAnswer(delay=RECEIVER_TIMEOUT_SECONDS + 1)
        for receiver in receivers:
            receiver.script(*[hang] * RECEIVER_HANGS)
        # The hangs first: while `fail_for` lasts, the receiver answers nothing it was scripted.
        if stop.wait(RECEIVER_TIMEOUT_SECONDS + 1):
            return
        for receiver in receivers:
            receiver.fail_for(RECEIVER_OUTAGE_SECONDS, status=500)
        if stop.wait(RECEIVER_OUTAGE_SECONDS):
            return
        print(f"  {time.monotonic() - started:6.1f} s  receivers recovered", flush=True)


# ------------------------------------------------------------------------------ the checks


# The answers a correct service gives the load (by `Outcome.label`): (status, error code or a
# stream's last event).
MESSAGE_ANSWERS = {
    (201, None),
    (200, "done"),
    (200, "error"),
    (402, "insufficient_credits"),
    (502, "provider_error"),
}
EXPECTED: dict[str, set[tuple[int, str | None]]] = {
    "message": MESSAGE_ANSWERS,
    "team message": MESSAGE_ANSWERS | {(402, "member_cap_reached")},
    "grant": {(201, None)},
    "team grant": {(201, None)},
    "transfer": {(201, None), (402, "insufficient_credits")},
    "adjust": {(200, None), (409, "balance_would_go_negative")},
    "refund": {(201, None), (409, "already_refunded")},
    "purchase": {(201, None)},
}


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    past_cap: list[str] = field(default_factory=list)  # a member's cap passed or miscounted
    caps: dict[int, tuple[int | None, int]] = field(default_factory=dict)  # user id: cap, spent
    other: list[str] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)  # what happened, for the table
    signals: dict[str, int] = field(default_factory=dict)  # the outbox and the receivers


def wait_for_jobs(url: str, seeded: Seeded, paid: list[int], timeout: float) -> None:
    """Until no hold is pending, no compensation is due, every user whose period ended has
    the new period's grant, and no purchase Stripe was paid for is pending (its event lost or
    given up, the sync job's look had not come): what the beat's jobs owe once the load has
    stopped."""
    ended = [user.account_id for user in seeded.users if user.period_ends]
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            pending = connection.execute(
                "SELECT (SELECT count(*) FROM holds WHERE status = 'pending'),"
                " (SELECT count(*) FROM compensations WHERE status IN ('pending', 'processing')),"
                " (SELECT count(*) FROM purchases WHERE status = 'pending' AND id = ANY(%s))",
                (paid,),
            ).fetchone()
            assert pending is not None
            renewed = connection.execute(
                "SELECT count(*) FROM (SELECT account_id FROM grants WHERE source = 'subscription'"
                " AND account_id = ANY(%s) GROUP BY account_id HAVING count(*) >= 2) AS renewed",
                (ended,),
            ).fetchone()
            if pending == (0, 0, 0) and renewed and renewed[0] == len(ended):
                return
            time.sleep(1)


def wait_for_deliveries(url: str) -> None:
    """Until no delivery is pending, or for as long as the last ones may take: a delivery
    leased by a run killed while posting waits out its lease, and one that met the receivers'
    outage waits out a step of the retry schedule."""
    from creditapp.signals.delivery import LEASE_MARGIN_SECONDS

    lease = 2 * RECEIVER_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS
    period = JOB_PERIODS["DELIVER_WEBHOOKS"]
    deadline = time.monotonic() + lease + max(RECEIVER_RETRY_SCHEDULE) + 5 * period
    with psycopg.connect(url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            pending = connection.execute(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
            ).fetchone()
            if pending == (0,):
                return
            time.sleep(1)


def check_signals(
    url: str, listeners: list[Listener], listening_since: datetime, found: Findings
) -> None:
    """Every committed event of an account since every endpoint was made has a delivery to its
    account's, every delivery is delivered, and its receiver got it (its `evt_<id>`, its type
    and data) with a valid signature; none came under two webhook-ids (one body under two ids,
    or an id the outbox never sent to that endpoint)."""
    with psycopg.connect(url, autocommit=True) as db:
        events = {
            event_id: (account_id, kind, data, created_at)
            for event_id, account_id, kind, data, created_at in db.execute(
                "SELECT id, account_id, type, data, created_at FROM webhook_events"
            ).fetchall()
        }
        deliveries = db.execute(
            "SELECT event_id, endpoint_id, status, attempts, last_error FROM webhook_deliveries"
        ).fetchall()
        endpoints = db.execute(
            "SELECT id, account_id, enabled, disabled_reason FROM webhook_endpoints"
            " WHERE deleted_at IS NULL"
        ).fetchall()
    sent = {(endpoint_id, event_id) for event_id, endpoint_id, *_ in deliveries}
    for endpoint_id, account_id, enabled, reason in endpoints:
        if not enabled:
            found.other.append(f"endpoint {endpoint_id}: disabled ({reason})")
        # While the endpoints were being made, a job's event (grant.expiring: thresholds
        # made the account watched) may come before its account's endpoint.
        for event_id, (of_account, kind, _, at) in events.items():
            if (
                of_account == account_id
                and at > listening_since
                and (endpoint_id, event_id) not in sent
            ):
                found.lost.append(
                    f"event evt_{event_id} ({kind}): no delivery to endpoint {endpoint_id}"
                )
    for event_id, endpoint_id, status, attempts, error in deliveries:
        if status != "delivered":
            found.lost.append(
                f"event evt_{event_id} ({events[event_id][1]}) to endpoint {endpoint_id}:"
                f" {status} after {attempts} attempts ({error})"
            )

    requests = 0
    redelivered = 0
    for listener in listeners:
        received = listener.receiver.received
        requests += len(received)
        ids_by_body: dict[bytes, set[str]] = {}
        got: Counter[str] = Counter()
        for request in received:
            if not request.verified:
                found.other.append(
                    f"{listener.who}: {request.webhook_id or '(no id)'}: signature did not verify"
                )
                continue
            ids_by_body.setdefault(request.body, set()).add(request.webhook_id)
            got[request.webhook_id] += 1
            event_id = int(request.webhook_id.removeprefix("evt_"))
            if (listener.endpoint_id, event_id) not in sent:
                found.doubled.append(
                    f"{listener.who}: received {request.webhook_id}, which the outbox never sent it"
                )
                continue
            _, kind, data, _ = events[event_id]
            if (request.payload.get("type"), request.payload.get("data")) != (kind, data):
                found.other.append(
                    f"{listener.who}: {request.webhook_id} came as {request.payload}, the event"
                    f" is {kind} {data}"
                )
        redelivered += sum(count - 1 for count in got.values())
        for body, ids in ids_by_body.items():
            if len(ids) > 1:
                found.doubled.append(
                    f"{listener.who}: one event under ids {sorted(ids)}: {body[:120]!r}"
                )
        for event_id, endpoint_id, status, *_ in deliveries:
            mine = endpoint_id == listener.endpoint_id
            if mine and status == "delivered" and not got[f"evt_{event_id}"]:
                found.lost.append(
                    f"{listener.who}: evt_{event_id} delivered, never received with a valid"
                    " signature"
                )

    by_type = Counter(kind for _, kind, _, _ in events.values())
    found.signals = {
        **{f"events {kind}": count for kind, count in sorted(by_type.items())},
        "deliveries": len(deliveries),
        "  delivered at the first attempt": sum(
            1 for d in deliveries if d[2] == "delivered" and d[3] == 1
        ),
        "  delivered on a retry": sum(1 for d in deliveries if d[2] == "delivered" and d[3] > 1),
        "attempts recorded": sum(d[3] for d in deliveries),
        "  the most of one delivery": max((d[3] for d in deliveries), default=0),
        "requests the receivers got": requests,
        "  an id received again (retried after a failure or a timeout)": redelivered,
    }


def check(url: str, clients: Clients, deployment: Deployment, uncounted_at_most: int) -> Findings:
    found = Findings()
    with psycopg.connect(url, autocommit=True) as db:

        def rows(query: str, *params: Any) -> list[tuple[Any, ...]]:
            return db.execute(query, params).fetchall()

        # Reconciliation, run now that the jobs have caught up (the beat's last report may be
        # older): its report must find no drift.
        reconciled = subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "jobs", "run", "reconcile"],
            cwd=ROOT,
            env={**deployment.env, "DATABASE_URL": url},
            capture_output=True,
        )
        ((drift,),) = rows("SELECT drift FROM reconciliation_reports ORDER BY id DESC LIMIT 1")
        found.lost += [f"drift: {item}" for item in drift]
        if reconciled.returncode not in (0, 1):
            found.other.append(f"reconcile failed: {reconciled.stderr.decode()[-500:]}")

        # Every message a client saw answered: charged once, exactly its cost.
        for outcome in clients.outcomes:
            if outcome.kind != "message" or outcome.message_id is None:
                continue
            found_rows = rows(
                "SELECT u.cost, u.credits_charged, u.ending,"
                " (SELECT coalesce(-sum(e.amount), 0) FROM ledger_entries e"
                "  WHERE e.hold_id = u.hold_id AND e.type = 'charge')"
                " FROM messages m JOIN usage_records u ON u.id = m.usage_id WHERE m.id = %s",
                outcome.message_id,
            )
            if not found_rows:
                if outcome.charged:
                    found.lost.append(f"message {outcome.message_id}: charged, no usage record")
                continue
            cost, charged, ending, in_ledger = found_rows[0]
            if in_ledger > outcome.charged:
                found.doubled.append(
                    f"message {outcome.message_id}: ledger charged {in_ledger}, client saw "
                    f"{outcome.charged}"
                )
            elif in_ledger < outcome.charged or charged != outcome.charged:
                found.lost.append(
                    f"message {outcome.message_id}: ledger {in_ledger}, usage {charged}, client "
                    f"saw {outcome.charged}"
                )
            if outcome.code in (None, "done") and ending == "completed" and charged != cost:
                found.lost.append(f"message {outcome.message_id}: charged {charged}, cost {cost}")

        # Per user: the ledger's charges, admin grants, adjustments, purchase grants and
        # transfers out are what clients learned (a purchase's once Stripe was paid); on the
        # team's account, each member's charges, everyone's transfers in and the admin's grants.
        learned: dict[tuple[int | None, str], list[int]] = {}
        for outcome in clients.outcomes:
            value = outcome.charged if outcome.kind == "message" else outcome.amount
            if value:
                # The admin's grants to the team are nobody's in particular.
                who = None if outcome.label == "team grant" else outcome.user
                learned.setdefault((who, outcome.label), []).append(value)

        def compare(what: str, in_ledger: tuple[int, int], seen: list[int], sign: int) -> None:
            """An operation drawing on several grants writes an entry for each, under one audit
            record: operations are counted by their audit records. More taken from an account
            (sign -1) than clients learned is doubled; anything else amiss is lost."""
            count, total = in_ledger
            described = (
                f"{what}: ledger {count} entries, {sign * total} µcr; clients learned"
                f" {len(seen)}, {sum(seen)} µcr"
            )
            if count != len(seen):
                (found.doubled if count > len(seen) else found.lost).append(described)
            elif sign * total != sum(seen):
                taken_more = sign < 0 and sign * total > sum(seen)
                (found.doubled if taken_more else found.lost).append(described)

        def ledger_sums(account_id: int) -> dict[tuple[int | None, str], tuple[int, int]]:
            """(count of operations, sum) of the account's entries by who caused them and kind."""
            return {
                (user_id, kind): (count, total)
                for user_id, kind, count, total in rows(
                    "SELECT e.user_id, CASE WHEN e.type = 'grant' THEN 'grant:' || g.source"
                    " ELSE e.type END, count(DISTINCT e.audit_id), sum(e.amount)"
                    " FROM ledger_entries e JOIN grants g ON g.id = e.grant_id"
                    " WHERE e.account_id = %s GROUP BY 1, 2",
                    account_id,
                )
            }

        for user in clients.seeded.users:
            personal: Counter[str] = Counter()
            operations: Counter[str] = Counter()
            # A personal account's entries name its owner or nobody: one sum per kind.
            for (_, kind), (count, total) in ledger_sums(user.account_id).items():
                operations[kind] += count
                personal[kind] += total
            for kind, ledger_kind, sign in (
                ("message", "charge", -1),
                ("grant", "grant:admin", 1),
                ("adjust", "adjust", 1),
                ("purchase", "grant:purchase", 1),
                ("transfer", "transfer_out", -1),
            ):
                compare(
                    f"user {user.index} {kind}",
                    (operations[ledger_kind], personal[ledger_kind]),
                    learned.get((user.index, kind), []),
                    sign,
                )
        team = clients.team
        assert team is not None
        on_team = ledger_sums(team.account_id)
        for user in [team.owner, *team.members]:
            for kind, ledger_kind, sign in (
                ("team message", "charge", -1),
                ("transfer", "transfer_in", 1),
            ):
                compare(
                    f"team account, user {user.index} {kind}",
                    on_team.get((user.id, ledger_kind), (0, 0)),
                    learned.get((user.index, kind), []),
                    sign,
                )
        granted = [value for (_, kind), value in on_team.items() if kind == "grant:admin"]
        compare(
            "team account grant",
            (sum(c for c, _ in granted), sum(t for _, t in granted)),
            learned.get((None, "team grant"), []),
            1,
        )
        in_team = {user.id for user in [team.owner, *team.members]}
        found.doubled += [
            f"team account: {kind} entries of user id {who}, in no team's load"
            for who, kind in on_team
            if kind in ("charge", "transfer_in") and who not in in_team
        ]

        # No member past cap: what each member spent this period (the cap's counter, one row)
        # is within the ceiling, nothing is left reserved, and it equals the member's charges
        # on the team account since the period began.
        from creditapp.ledger.caps import period_starts

        now = datetime.now(UTC)
        index_of = {user.id: user.index for user in clients.seeded.users}
        for user_id, ceiling, spent, reserved, period, period_start, charges in rows(
            "SELECT m.user_id, c.ceiling, c.spent, c.reserved, c.period, c.period_start,"
            " (SELECT coalesce(-sum(e.amount), 0) FROM ledger_entries e WHERE e.account_id = %s"
            "  AND e.user_id = m.user_id AND e.type = 'charge' AND e.created_at >= %s)"
            " FROM team_members m JOIN spend_caps c ON c.id = m.cap_id WHERE m.team_id = %s",
            team.account_id,
            period_starts(now)["month"],
            team.id,
        ):
            if period != "month":
                found.past_cap.append(
                    f"user {index_of[user_id]}: cap counted per {period}, set per month"
                )
                continue
            spent_now = spent if period_start >= period_starts(now)["month"] else 0
            found.caps[user_id] = (ceiling, spent_now)
            what = (
                f"user {index_of[user_id]}: cap {ceiling}, spent {spent_now}, reserved {reserved},"
                f" charged {charges} µcr"
            )
            if user_id in team.caps and ceiling != team.caps[user_id]:
                found.past_cap.append(f"{what}; the API set a cap of {team.caps[user_id]}")
            if ceiling is not None and spent_now + reserved > ceiling:
                found.past_cap.append(f"{what}: past the ceiling")
            if reserved:
                found.past_cap.append(f"{what}: reserved with no hold pending")
            if spent_now != charges:
                found.past_cap.append(f"{what}: counted other than charged")

        # Purchases: each one Stripe was paid for granted exactly once, its credits, whether the
        # webhook or the sync job came first; none granted that was not paid.
        paid_for = paid_purchases(clients)
        stored = rows(
            "SELECT p.id, p.status, p.credits, p.grant_id, count(g.id),"
            " coalesce(sum(g.amount), 0), coalesce(bool_and(g.id = p.grant_id), true)"
            " FROM purchases p LEFT JOIN ledger_entries e ON e.type = 'grant'"
            "  AND e.reference = 'purchase:' || p.id"
            " LEFT JOIN grants g ON g.id = e.grant_id AND g.source = 'purchase' GROUP BY p.id"
        )
        for purchase_id, status, bought, grant_id, grants, granted, its_grant in stored:
            what = (
                f"purchase {purchase_id}: {status}, {grants} grants of {granted} µcr"
                f" (grant_id {grant_id}), {bought} µcr bought"
            )
            if purchase_id not in paid_for:
                if grants or grant_id is not None or status == "paid":
                    found.doubled.append(f"{what}, never paid")
            elif grants > 1:
                found.doubled.append(what)
            elif (
                grants == 0
                or status != "paid"
                or not its_grant
                or granted != bought
                or bought != paid_for[purchase_id]
            ):
                found.lost.append(f"{what}, paid {paid_for[purchase_id]} µcr")
        for purchase_id in paid_for.keys() - {row[0] for row in stored}:
            found.lost.append(f"purchase {purchase_id}: paid, not in the database")
        for (grant_id,) in rows(
            "SELECT g.id FROM grants g WHERE g.source = 'purchase'"
            " AND NOT EXISTS (SELECT 1 FROM purchases p WHERE p.grant_id = g.id)"
        ):
            found.doubled.append(f"grant {grant_id}: a purchase grant of no purchase")
        ((by_the_job,),) = rows(
            "SELECT count(*) FROM ledger_entries e JOIN audit_records a ON a.id = e.audit_id"
            " WHERE e.type = 'grant' AND e.reference LIKE 'purchase:%%'"
            " AND a.details ->> 'cause' = 'sync-purchases'"
        )

        # Nothing left pending; one subscription grant per user and period.
        for (hold_id,) in rows("SELECT id FROM holds WHERE status = 'pending'"):
            found.lost.append(f"hold {hold_id} still pending")
        for account_id, period, count in rows(
            "SELECT account_id, period, count(*) FROM grants WHERE source = 'subscription'"
            " GROUP BY account_id, period HAVING count(*) > 1"
        ):
            found.doubled.append(f"account {account_id}: {count} grants for period {period}")
        for user in clients.seeded.users:
            if user.period_ends is None:
                continue
            ((periods,),) = rows(
                "SELECT count(*) FROM grants WHERE source = 'subscription' AND account_id = %s",
                user.account_id,
            )
            if periods != 2:
                found.lost.append(f"user {user.index}: {periods} subscription periods granted")

        # Compensations: each paid at most once, and every one paid.
        for compensation_id, status, refunds in rows(
            "SELECT c.id, c.status, (SELECT count(*) FROM ledger_entries e WHERE e.type ="
            " 'refund' AND e.reference = 'compensation:' || c.id) FROM compensations c"
        ):
            if refunds > 1:
                found.doubled.append(f"compensation {compensation_id} paid {refunds} times")
            if status != "completed" or refunds == 0:
                found.lost.append(f"compensation {compensation_id}: {status}, {refunds} refunds")

        ((paid, expired, unbilled, renewed),) = rows(
            "SELECT (SELECT count(*) FROM compensations WHERE status = 'completed'),"
            " (SELECT count(*) FROM holds WHERE status = 'expired'),"
            " (SELECT count(*) FROM unbilled_usage),"
            " (SELECT count(*) FROM grants WHERE source = 'subscription'"
            "  AND period <> (SELECT min(g.period) FROM grants g"
            "  WHERE g.account_id = grants.account_id AND g.source = 'subscription'))"
        )
        found.facts = {
            "compensations paid": paid,
            "holds expired by the job (their request died)": expired,
            "calls never billed (their settle met a fault)": unbilled,
            "subscription periods renewed during the run": renewed,
            "purchases paid, each granted once": len(paid_for),
            "  of which granted by the sync job (event lost, late, given up)": by_the_job,
        }

        # The metrics: every web instance's now, and what killed ones had counted.
        counted: Counter[str] = Counter()
        for web in deployment.web:
            counted.update(web.retired)
            counted.update(metric_totals(read_metrics_dir(web.metrics_dir)))
        ((answered, charged_total),) = rows(
            "SELECT count(*) FILTER (WHERE ending IN ('completed', 'client_closed')),"
            " coalesce(sum(credits_charged), 0) FROM usage_records"
        )
        # Counters are not in the database's transaction: a worker killed between a message's
        # commit and its counter loses the increment, and a commit whose acknowledgment was
        # lost with the connection (PostgreSQL cut) is counted as settle_failed while it was
        # in fact made (the client's retry replays it). So the metrics may fall short, by at
        # most a message per thread at risk; never exceed.
        short = answered - counted["answered"]
        found.facts["answered, not in the metrics (killed or commit unacknowledged)"] = short
        if not 0 <= short <= uncounted_at_most or (short == 0) != (
            counted["credits"] == charged_total
        ):
            found.other.append(
                f"metrics: {counted['answered']} answered, {counted['credits']} µcr charged;"
                f" database: {answered} answered, {charged_total} µcr (killed workers could"
                f" miss at most {uncounted_at_most})"
            )
    for outcome in clients.outcomes:
        if (outcome.status, outcome.code) not in EXPECTED[outcome.label]:
            found.other.append(f"{outcome.label} {outcome.key}: unexpected {describe(outcome)}")
    if not any(o.kind == "message" and o.charged for o in clients.outcomes):
        found.other.append("no message was charged: the run proved nothing")
    if not any(o.code == "member_cap_reached" for o in clients.outcomes):
        found.other.append("no member met their cap: the run proved nothing of caps")
    if not any(o.label == "team message" and o.charged for o in clients.outcomes):
        found.other.append("no team message was charged: the run proved nothing of teams")
    for outcome in clients.outcomes + clients.unlearned:
        if outcome.server_errors:
            found.other.append(f"{outcome.kind} {outcome.key}: HTTP {outcome.server_errors}")
    found.other += [f"{o.kind} {o.key}: no outcome learned" for o in clients.unlearned]
    found.other += [f"webhook: {failure}" for failure in clients.webhook_failures]
    return found


def paid_purchases(clients: Clients) -> dict[int, int]:
    """The purchases Stripe was paid for: their credits (µcr) by purchase id."""
    return {
        outcome.purchase_id: outcome.amount
        for outcome in clients.outcomes
        if outcome.kind == "purchase" and outcome.purchase_id is not None
    }


# --------------------------------------------------------------------------------- the run


def answered_messages(clients: Clients) -> int:
    with clients.lock:
        return sum(
            1
            for o in clients.outcomes
            if o.kind == "message" and o.code in (None, "done") and o.status in (200, 201)
        )


def warm_up(clients: Clients, deployment: Deployment, seconds: float) -> tuple[float, float]:
    """Fault-free messages per second through one web instance, then through both."""
    time.sleep(seconds / 3)  # workers load their SDKs, pools fill: not measured
    rates = []
    for ports in ([deployment.web[0].port], [web.port for web in deployment.web]):
        clients.ports_in_use = ports
        before, started = answered_messages(clients), time.monotonic()
        time.sleep(seconds)
        rates.append((answered_messages(clients) - before) / (time.monotonic() - started))
    return rates[0], rates[1]


def heal(deployment: Deployment) -> None:
    """End every fault: proxies open, the provider well, every process running."""
    deployment.pg_proxy.restore()
    deployment.redis_proxy.restore()
    deployment.provider.reset()
    deployment.provider.piece_delay = 0.02
    time.sleep(6)  # restarts the injector scheduled happen first
    for service in deployment.services:
        if not service.alive:
            service.start()
    for web in deployment.web:
        web.wait_ready()


def describe(outcome: Outcome) -> str:
    if outcome.kind == "message" and outcome.status == 200:
        return f"{outcome.label} streamed, {outcome.code}" + (
            " (hung up, asked again)" if outcome.hung_up else ""
        )
    return f"{outcome.label} {outcome.status}" + (f" {outcome.code}" if outcome.code else "")


def report(
    clients: Clients,
    injector: Injector,
    deployment: Deployment,
    findings: Findings,
    rates: tuple[float, float],
    seed: int,
) -> None:
    outcomes = Counter(describe(outcome) for outcome in clients.outcomes)
    print("\nOperations by outcome")
    for name, count in sorted(outcomes.items()):
        print(f"  {name:62} {count:7}")
    retried = sum(1 for outcome in clients.outcomes if outcome.attempts > 1)
    print(f"  {'(asked more than once, one outcome each)':62} {retried:7}")
    print(f"  {'(no outcome learned)':62} {len(clients.unlearned):7}")
    print("\nFaults injected by kind")
    for kind in FAULT_KINDS:
        skipped = (
            f"  ({injector.skipped[kind]} with nothing to do)" if injector.skipped[kind] else ""
        )
        print(f"  {kind:62} {injector.injected[kind]:7}{skipped}")
    exits = ", ".join(f"{s.name} {s.exits}" for s in deployment.services if s.exits)
    print(f"  {'(processes that ended on their own, restarted)':62} {exits or 'none'}")
    print("\nPurchases paid, by how Stripe's events came; what the webhook answered")
    for name, count in sorted(clients.payments.items()):
        print(f"  {name:62} {count:7}")
    for name, count in sorted(clients.webhook_answers.items()):
        print(f"  {'answered ' + name:62} {count:7}")
    team = clients.team
    assert team is not None
    print("\nThe team's members: cap this month, spent, team messages refused at the cap")
    for member in team.members:
        ceiling, spent = findings.caps.get(member.id, (None, 0))
        refused = sum(
            1 for o in clients.outcomes if o.user == member.index and o.code == "member_cap_reached"
        )
        cap = "none" if ceiling is None else Decimal(ceiling) / MICRO
        print(
            f"  {f'user {member.index}':38} {cap!s:>9} {Decimal(spent) / MICRO!s:>12} {refused:7}"
        )
    print("\nSignals out: the outbox's events, their deliveries, what the receivers got")
    for name, count in findings.signals.items():
        print(f"  {name:62} {count:7}")
    print("\nWhat the jobs and the ledger did")
    for name, count in findings.facts.items():
        print(f"  {name:62} {count:7}")
    charged = sum(o.charged for o in clients.outcomes if o.kind == "message")
    print(f"\nCredits charged (as clients learned them): {Decimal(charged) / MICRO}")
    print(
        f"Fault-free warm-up: {rates[0]:.1f} answered messages/s through one web instance,"
        f" {rates[1]:.1f} through two"
    )
    for title, items in (
        ("LOST", findings.lost),
        ("DOUBLED", findings.doubled),
        ("PAST CAP", findings.past_cap),
        ("OTHER", findings.other),
    ):
        for item in items[:20]:
            print(f"  {title}: {item}")
    print(
        f"\nlost {len(findings.lost)}, doubled {len(findings.doubled)},"
        f" members past cap {len(findings.past_cap)},"
        f" other failures {len(findings.other)}   (seed {seed})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="of load under faults")
    parser.add_argument("--seed", type=int, default=None, help="replays a run's fault schedule")
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--fault-every", type=float, default=8, help="seconds, on average")
    parser.add_argument("--warm-up", type=float, default=15, help="seconds per side")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=8)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(10**6)
    schedule = fault_schedule(args.seed, args.seconds, args.fault_every)
    print(
        f"chaos run: seed {args.seed}, {args.seconds:g} s of load by {args.users} users (some"
        f" of them a team's) and an admin, {len(schedule)} faults: two web instances x"
        f" {args.web_workers} workers,"
        " two Celery workers, two beats, PostgreSQL and Redis behind cuttable proxies"
    )
    for fault in schedule:
        print(f"  at {fault.at:6.1f} s  {fault.kind} ({fault.seconds:g} s)")
    logs = Path(tempfile.mkdtemp(prefix="creditapp-chaos-"))
    deployment = Deployment(args, logs)
    failed = True  # until the checks say otherwise (an error on the way keeps everything)
    # Set when supervision ends: before the deployment closes, however the run ends (an error
    # in the checks left the supervisor restarting every process `close` stopped).
    supervising = threading.Event()
    supervisor = threading.Thread(target=deployment.supervise, args=(supervising,), daemon=True)
    try:
        seeded = deployment.start()
        supervisor.start()
        clients = Clients(deployment, seeded, args.seed)
        team = clients.form_team(args.seconds)
        print(
            f"team {team.id}: user {team.owner.index} owns it; users"
            f" {', '.join(str(member.index) for member in team.members)} spend from it within"
            f" caps of {', '.join(str(Decimal(cap) / MICRO) for cap in team.caps.values())} credits"
            f" a month, {TEAM_CONNECTIONS} connections each",
            flush=True,
        )
        deployment.listeners += clients.listen()
        listening_since = datetime.now(UTC)
        print(
            f"signals: {len(deployment.listeners)} accounts with thresholds and an endpoint, each"
            f" at a receiver of its own; retries after {RECEIVER_RETRY_SCHEDULE} s",
            flush=True,
        )
        injector = Injector(deployment, schedule, args.seed)
        with clients.running(seeded.users):
            rates = warm_up(clients, deployment, args.warm_up)
            print("faults:", flush=True)
            started = time.monotonic()
            faults = threading.Thread(target=injector.run, args=(started,))
            outages = threading.Thread(
                target=fail_receivers,
                args=(deployment.listeners, receiver_outages(args.seconds), started, injector.stop),
            )
            faults.start()
            outages.start()
            time.sleep(args.seconds)
            injector.stop.set()
            faults.join()
            outages.join()
            print("load stopping: every client learns its last outcome", flush=True)
        heal(deployment)
        clients.finish_deliveries()
        wait_for_jobs(
            deployment.direct_url,
            seeded,
            list(paid_purchases(clients)),
            timeout=HOLD_TTL_SECONDS * 3,
        )
        # Each thread of a killed worker, and of every worker when PostgreSQL was cut, may
        # have been between a commit and its counter (see check).
        workers_at_risk = (
            injector.injected["kill_web_worker"]
            + injector.injected["kill_web_master"] * args.web_workers
            + injector.injected["cut_postgres"] * len(deployment.web) * args.web_workers
        )
        wait_for_deliveries(deployment.direct_url)
        findings = check(
            deployment.direct_url, clients, deployment, workers_at_risk * args.web_threads
        )
        check_signals(deployment.direct_url, deployment.listeners, listening_since, findings)
        for watch in injector.watching:
            watch.join()
        findings.facts["beat locks taken over after their holder was killed"] = sum(
            injector.takeovers
        )
        if not all(injector.takeovers):
            findings.other.append(
                f"{injector.takeovers.count(False)} beat lock(s) not taken over after the"
                " holder was killed"
            )
        report(clients, injector, deployment, findings, rates, args.seed)
        failed = bool(findings.lost or findings.doubled or findings.past_cap or findings.other)
    finally:
        supervising.set()
        if supervisor.is_alive():  # a restart it is making finishes before `close` stops all
            supervisor.join()
        deployment.close(keep_database=failed)
        if failed:
            print(f"logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
