"""Settings from the environment (12-factor), one class per environment."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from limits import parse_many
from redis.backoff import NoBackoff
from redis.retry import Retry

from creditapp.errors import ConfigurationError

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0123456789"
# Seconds between two runs of each job, unless JOB_PERIOD_<NAME>_SECONDS says otherwise.
JOB_PERIODS = {
    "refresh": 300,  # users renew at any time of day: a renewal waits at most this long
    "compensations": 60,
    "rollup": 300,
    "expire-holds": 60,
    "reconcile": 3600,
    "expire-grants": 300,
    "purge-idempotency": 3600,
    "sync-purchases": 600,  # a purchase whose webhook was lost is granted within 15 minutes
    # A low-balance alert is only useful before the balance runs out: an event is posted
    # within seconds of its commit (and a first retry, due 5 s after, is not held back long).
    "deliver-webhooks": 10,
}


# The SDKs wait between attempts as the provider's Retry-After says, up to 60 s (OpenAI's and
# Anthropic's cap; Gemini's backoff is capped at 60 s too).
PROVIDER_RETRY_WAIT_SECONDS = 60
# Preparing the call before it and reaching the settle after it.
PROVIDER_CALL_MARGIN_SECONDS = 30


def longest_provider_call_seconds(timeout_seconds: int, max_retries: int) -> int:
    """How long a message can wait on its provider, every attempt timing out: a hold must
    outlive this, or the expiry job would release it while the call still runs."""
    return (
        timeout_seconds * (max_retries + 1)
        + PROVIDER_RETRY_WAIT_SECONDS * max_retries
        + PROVIDER_CALL_MARGIN_SECONDS
    )


def previous_jwt_secret_key() -> str | None:
    """The running app's JWT_PREVIOUS_SECRET_KEY, read as flask-jwt-extended reads
    JWT_SECRET_KEY (from the app of the request), so that token rules need not know Flask."""
    previous = current_app.config.get("JWT_PREVIOUS_SECRET_KEY")
    return str(previous) if previous else None


def sqlalchemy_url(url: str) -> str:
    """Point plain `postgresql://` URLs at the psycopg 3 driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _bool_env(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false"):
        raise ConfigurationError(f"{name} must be true or false, got {raw!r}")
    return raw.lower() == "true"


def _schedule_env(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Comma-separated whole seconds, each at least 1 (`5,300,1800`)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        schedule = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be whole seconds, comma-separated") from exc
    if not schedule or min(schedule) < 1:
        raise ConfigurationError(f"{name} must list at least one delay of at least 1 second")
    return schedule


# A statement's error names its SQL, not its bound values: an error is logged whole
# (`database_unavailable`, `job_run`), and the values of an insert are secrets (a webhook
# endpoint's), emails, messages. (PostgreSQL's own message may still quote a key's value, as a
# unique violation's DETAIL does: no secret has a unique key.)
NO_PARAMETERS_IN_ERRORS = {"hide_parameters": True}


@dataclass(frozen=True)
class ProviderSettings:
    base_url: str | None
    api_key: str | None


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks_env(name: str, default: str) -> tuple[IpNetwork, ...]:
    """Comma-separated addresses or networks (`127.0.0.1,10.0.0.0/8,::1`)."""
    raw = os.environ.get(name) or default
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(","))
    except ValueError as exc:
        raise ConfigurationError(
            f"{name} must be IP addresses or networks, comma-separated"
        ) from exc


def _int_env(name: str, default: int, *, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


class Config:
    ENV_NAME = "development"
    TESTING = False

    MAX_CONTENT_LENGTH = 64 * 1024

    SQLALCHEMY_TRACK_MODIFICATIONS = False

    JWT_ALGORITHM = "HS256"
    JWT_DECODE_ALGORITHMS = ["HS256"]
    JWT_TOKEN_LOCATION = ["headers"]
    # No double-submit CSRF value in tokens that never travel in cookies: a random claim would
    # keep a refresh from issuing the same pair again within the reuse grace.
    JWT_COOKIE_CSRF_PROTECT = False

    RATELIMIT_HEADERS_ENABLED = True
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    # Redis failing after the limit was checked (while the view ran) must not turn its answer
    # into a 500: the rate-limit headers are then left out, and the error logged.
    RATELIMIT_SWALLOW_ERRORS = True
    # One budget per user (or client IP) across every endpoint; the kinds below come on top.
    RATELIMIT_APPLICATION = "100 per minute"
    RATELIMIT_SENSITIVE = "10 per 5 minutes"
    RATELIMIT_SPENDING = "30 per minute"

    API_TITLE = "creditapp"
    API_VERSION = "1"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/api"
    OPENAPI_JSON_PATH = "openapi.json"

    IDEMPOTENCY_RETENTION = timedelta(hours=24)

    def __init__(self) -> None:
        env = os.environ
        default_db = f"sqlite:///{INSTANCE_DIR / 'creditapp.db'}"
        self.SQLALCHEMY_DATABASE_URI = sqlalchemy_url(env.get("DATABASE_URL") or default_db)
        self.REDIS_URL = env.get("REDIS_URL") or None
        self.CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or self.REDIS_URL
        self.RATELIMIT_STORAGE_URI = self.REDIS_URL or "memory://"
        self.RATELIMIT_ENABLED = env.get("RATELIMIT_ENABLED", "true").lower() != "false"
        self.JWT_SECRET_KEY = env.get("JWT_SECRET_KEY") or DEV_JWT_SECRET
        # The key JWT_SECRET_KEY replaced: tokens it signed are still accepted while it is set
        # (docs/deploy.md, "Rotating JWT_SECRET_KEY"); new tokens are signed with the new key.
        self.JWT_PREVIOUS_SECRET_KEY = env.get("JWT_PREVIOUS_SECRET_KEY") or None
        # Google sign-in: the OAuth client ids whose ID tokens are accepted (web, mobile, ...).
        self.GOOGLE_CLIENT_IDS = [
            client_id.strip()
            for client_id in (env.get("GOOGLE_CLIENT_ID") or "").split(",")
            if client_id.strip()
        ]
        self.GOOGLE_CERTS_URL = env.get("GOOGLE_CERTS_URL") or GOOGLE_CERTS_URL
        self.JWT_ACCESS_TOKEN_EXPIRES = timedelta(minutes=_int_env("JWT_ACCESS_MINUTES", 15))
        self.JWT_REFRESH_TOKEN_EXPIRES = timedelta(days=_int_env("JWT_REFRESH_DAYS", 30))
        # A refresh token presented again this soon after it was rotated away is a second tab
        # or a retried request, not a stolen copy: it gets the same new pair (0: never).
        self.REFRESH_REUSE_GRACE_SECONDS = _int_env("REFRESH_REUSE_GRACE_SECONDS", 10, minimum=0)
        # `POST /api/auth/demo` signs anyone in as the demo user: `make run` turns it on.
        self.DEMO_MODE = (env.get("DEMO_MODE") or "false").lower() == "true"
        # How often one IP may use the demo sign-in: the sensitive limit unless told (`make run`
        # allows more, for a person clicking around).
        self.DEMO_SIGN_IN_LIMIT = env.get("DEMO_SIGN_IN_LIMIT") or self.RATELIMIT_SENSITIVE
        try:
            parse_many(self.DEMO_SIGN_IN_LIMIT)
        except ValueError as exc:
            raise ConfigurationError(
                "DEMO_SIGN_IN_LIMIT must be a rate limit such as '10 per 5 minutes', got "
                f"{self.DEMO_SIGN_IN_LIMIT!r}"
            ) from exc
        self.LOG_LEVEL = (env.get("LOG_LEVEL") or "INFO").upper()
        if self.LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError(
                f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.LOG_LEVEL!r}"
            )
        # Proxies in front whose X-Forwarded-For / -Proto entries are believed (nginx: 1); with
        # 0 the client is whoever connected, and forwarded headers are ignored.
        self.TRUSTED_PROXY_HOPS = _int_env("TRUSTED_PROXY_HOPS", 0, minimum=0)
        # ... and only from a connection of these (the nginx on this machine; a Unix socket's
        # connections are always this machine's): a client that reaches gunicorn itself (a
        # port opened for Prometheus) writes those headers as it likes.
        self.TRUSTED_PROXY_ADDRESSES = _networks_env("TRUSTED_PROXY_ADDRESSES", "127.0.0.1,::1")
        # When set, `/metrics` answers only `Authorization: Bearer <METRICS_TOKEN>`.
        self.METRICS_TOKEN = env.get("METRICS_TOKEN") or None
        self.HOLD_TTL_SECONDS = _int_env("HOLD_TTL_SECONDS", 600)
        self.PROVIDER_TIMEOUT_SECONDS = _int_env("PROVIDER_TIMEOUT_SECONDS", 120)
        # Retries inside the SDKs, bounded so that a hold never outlives a slow provider.
        self.PROVIDER_MAX_RETRIES = _int_env("PROVIDER_MAX_RETRIES", 2, minimum=0)
        self.PROVIDER_SETTINGS = {
            name: ProviderSettings(
                base_url=env.get(f"{prefix}_BASE_URL") or None,
                api_key=env.get(f"{key_prefix}_API_KEY") or None,
            )
            for name, prefix, key_prefix in (
                ("openai", "OPENAI", "OPENAI"),
                ("anthropic", "ANTHROPIC", "ANTHROPIC"),
                ("google", "GOOGLE_GEMINI", "GEMINI"),
            )
        }
        # A stream is settled by then, whatever is still to come: a tenth of its hold's life is
        # left for that settle, before the expiry job voids the hold and a retry with the same
        # Idempotency-Key may take the call over (`creditapp.billing.call.Meter`).
        self.STREAM_DEADLINE_SECONDS = self.HOLD_TTL_SECONDS * 9 / 10
        longest_call = longest_provider_call_seconds(
            self.PROVIDER_TIMEOUT_SECONDS, self.PROVIDER_MAX_RETRIES
        )
        if longest_call >= self.STREAM_DEADLINE_SECONDS:
            raise ConfigurationError(
                f"HOLD_TTL_SECONDS ({self.HOLD_TTL_SECONDS}) must be longer than the longest "
                f"provider call can take, by a ninth of it (a stream ends a tenth of a hold's "
                f"life before its hold): {longest_call} s with PROVIDER_TIMEOUT_SECONDS="
                f"{self.PROVIDER_TIMEOUT_SECONDS} and PROVIDER_MAX_RETRIES="
                f"{self.PROVIDER_MAX_RETRIES}"
            )
        # How often beat runs each job (creditapp.jobs.schedule).
        self.JOB_PERIODS = {
            job: _int_env(f"JOB_PERIOD_{job.upper().replace('-', '_')}_SECONDS", seconds)
            for job, seconds in JOB_PERIODS.items()
        }
        # How long beat sleeps at most between two looks at its schedule and its lock.
        self.BEAT_MAX_LOOP_SECONDS = _int_env("BEAT_MAX_LOOP_SECONDS", 30)
        # A compensation whose payment failed this many times is `failed`, for an admin.
        self.COMPENSATION_MAX_ATTEMPTS = _int_env("COMPENSATION_MAX_ATTEMPTS", 5)
        self.COMPENSATION_BASE_DELAY_SECONDS = _int_env("COMPENSATION_BASE_DELAY_SECONDS", 60)
        # A task a dead worker held goes back to the queue after this long (Redis broker).
        self.CELERY_VISIBILITY_TIMEOUT = _int_env("CELERY_VISIBILITY_TIMEOUT", 900)
        # Timeouts on every dependency: one that hangs must not hang us (docs/deploy.md,
        # "Timeouts", says what a user sees when each fires).
        self.DATABASE_CONNECT_TIMEOUT_SECONDS = _int_env("DATABASE_CONNECT_TIMEOUT_SECONDS", 2)
        self.DATABASE_STATEMENT_TIMEOUT_SECONDS = _int_env("DATABASE_STATEMENT_TIMEOUT_SECONDS", 5)
        self.DATABASE_LOCK_TIMEOUT_SECONDS = _int_env("DATABASE_LOCK_TIMEOUT_SECONDS", 3)
        self.DATABASE_POOL_TIMEOUT_SECONDS = _int_env("DATABASE_POOL_TIMEOUT_SECONDS", 5)
        # A job's statements may read every account (reconciliation) or a day of usage.
        self.JOB_STATEMENT_TIMEOUT_SECONDS = _int_env("JOB_STATEMENT_TIMEOUT_SECONDS", 600)
        self.REDIS_TIMEOUT_SECONDS = _int_env("REDIS_TIMEOUT_SECONDS", 1)
        # Every Redis client (rate limits, the broker, results, beat's schedule and lock, the
        # readiness probe): connecting and each command give up after REDIS_TIMEOUT_SECONDS,
        # so that a Redis that hangs is a Redis that is down.
        self.REDIS_CLIENT_OPTIONS = {
            "socket_connect_timeout": self.REDIS_TIMEOUT_SECONDS,
            "socket_timeout": self.REDIS_TIMEOUT_SECONDS,
        }
        # For clients that answer a request (rate limits, the readiness probe): one attempt,
        # then memory or "unreachable" (redis-py would otherwise try three more times, with
        # backoff).
        self.REDIS_SINGLE_TRY_OPTIONS = {
            **self.REDIS_CLIENT_OPTIONS,
            "retry": Retry(NoBackoff(), 0),
        }
        self.RATELIMIT_STORAGE_OPTIONS = self.REDIS_SINGLE_TRY_OPTIONS
        self.CELERY = self._celery_settings()
        # Buying credits (Stripe Checkout): both secrets, or purchases answer 503.
        self.STRIPE_SECRET_KEY = env.get("STRIPE_SECRET_KEY") or None
        self.STRIPE_WEBHOOK_SECRET = env.get("STRIPE_WEBHOOK_SECRET") or None
        # Another host for Stripe's API (the tests' and the demo's fake Stripe).
        self.STRIPE_API_BASE = env.get("STRIPE_API_BASE") or None
        self.STRIPE_TIMEOUT_SECONDS = _int_env("STRIPE_TIMEOUT_SECONDS", 10)
        # Where Stripe sends the buyer back: this service's address as buyers reach it.
        self.PUBLIC_BASE_URL = env.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000"
        self.PURCHASE_MIN_CREDITS = _int_env("PURCHASE_MIN_CREDITS", 5000)
        self.PURCHASE_MAX_CREDITS = _int_env("PURCHASE_MAX_CREDITS", 1_000_000)
        # A purchase pending this long is looked up in Stripe by the sync-purchases job (its
        # webhook may have been lost; the buyer may still be paying before that).
        self.PURCHASE_SYNC_AFTER_SECONDS = _int_env("PURCHASE_SYNC_AFTER_SECONDS", 300)
        # Days purchased credits stay spendable (0: they never expire).
        self.PURCHASE_EXPIRY_DAYS = _int_env("PURCHASE_EXPIRY_DAYS", 0, minimum=0)
        for name in ("PURCHASE_MIN_CREDITS", "PURCHASE_MAX_CREDITS"):
            if getattr(self, name) % 10:
                raise ConfigurationError(f"{name} must be a multiple of 10 credits (a cent)")
        # What Stripe charges in US dollars: $0.50 at least, $999,999.99 at most (a purchase
        # outside it is refused by Stripe every time, which would read as Stripe being down).
        if not 500 <= self.PURCHASE_MIN_CREDITS <= self.PURCHASE_MAX_CREDITS <= 999_999_990:
            raise ConfigurationError(
                "500 <= PURCHASE_MIN_CREDITS <= PURCHASE_MAX_CREDITS <= 999999990 is needed"
                " (Stripe charges $0.50 to $999,999.99)"
            )
        # Outgoing webhooks may go to plain http and to loopback, private, link-local and
        # metadata addresses (tests and development only: production refuses to start with it).
        self.WEBHOOK_ALLOW_PRIVATE = _bool_env("WEBHOOK_ALLOW_PRIVATE", False)
        # Seconds before each retry of a delivery (one first attempt, then one per entry).
        self.WEBHOOK_RETRY_SCHEDULE = _schedule_env(
            "WEBHOOK_RETRY_SCHEDULE", (5, 300, 1800, 7200, 18000, 36000, 36000)
        )
        self.WEBHOOK_TIMEOUT_SECONDS = _int_env("WEBHOOK_TIMEOUT_SECONDS", 10)
        # Deliveries (and their events) older than this are purged by the delivery job.
        self.WEBHOOK_RETENTION_DAYS = _int_env("WEBHOOK_RETENTION_DAYS", 30)
        # How many days before a grant expires `grant.expiring` is sent.
        self.GRANT_EXPIRING_NOTICE_DAYS = _int_env("GRANT_EXPIRING_NOTICE_DAYS", 3)
        # How many earlier messages of a conversation are sent with a new one.
        self.CHAT_HISTORY_MESSAGES = _int_env("CHAT_HISTORY_MESSAGES", 40)
        # A streamed reply sends a keep-alive comment after this long without a word.
        self.STREAM_KEEPALIVE_SECONDS = _int_env("STREAM_KEEPALIVE_SECONDS", 15)
        # A claimed Idempotency-Key whose request never finished (a killed worker) may be
        # taken over after this long; the final transaction of the first request then fails
        # to complete its claim and rolls back, so the work still happens once.
        self.IDEMPOTENCY_TAKEOVER = timedelta(seconds=self.HOLD_TTL_SECONDS)
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            # No pre-ping: it costs a round trip per checkout on the ledger's hot path. A
            # connection the server dropped fails one request with 503 and SQLAlchemy then
            # replaces the whole pool; recycling keeps connections from going stale quietly.
            self.SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {
                **NO_PARAMETERS_IN_ERRORS,
                "pool_size": _int_env("DATABASE_POOL_SIZE", 10),
                # Connections beyond the pool are closed when returned: a burst does not
                # leave the process holding them.
                "max_overflow": _int_env("DATABASE_MAX_OVERFLOW", 20, minimum=0),
                "pool_recycle": 1800,
                # All connections busy (each waiting on a database that stopped answering, say):
                # a request waits this long for one, then answers 503.
                "pool_timeout": self.DATABASE_POOL_TIMEOUT_SECONDS,
                "connect_args": {
                    # psycopg counts it from the first packet to the end of authentication, so
                    # a server that accepts the connection and then says nothing is caught too
                    # (libpq's rule: 2 s at least).
                    "connect_timeout": self.DATABASE_CONNECT_TIMEOUT_SECONDS,
                    # Our transactions are short: a statement or a lock wait beyond these is
                    # a fault, cancelled by the server (jobs raise the statement timeout for
                    # their own transactions: `creditapp.database.longer_statements`).
                    "options": (
                        f"-c statement_timeout={self.DATABASE_STATEMENT_TIMEOUT_SECONDS * 1000}"
                        f" -c lock_timeout={self.DATABASE_LOCK_TIMEOUT_SECONDS * 1000}"
                    ),
                },
            }
            # Behind PgBouncer in transaction mode older than 1.21, a statement psycopg has
            # prepared on one server connection is unknown on the next: never prepare then.
            if (env.get("DATABASE_PREPARED_STATEMENTS") or "true").lower() == "false":
                self.SQLALCHEMY_ENGINE_OPTIONS["connect_args"]["prepare_threshold"] = None
        else:
            self.SQLALCHEMY_ENGINE_OPTIONS = dict(NO_PARAMETERS_IN_ERRORS)

    def _celery_settings(self) -> dict[str, Any]:
        """Celery's own settings (`celery.config_from_object`): Redis and redbeat when a broker
        is configured, else Kombu's file-system transport under instance/, a broker that needs
        no server yet works across processes, with beat's schedule in a file beside it."""
        common = {
            "task_ignore_result": False,
            "worker_hijack_root_logger": False,
            # Our log lines are JSON on stderr, as the web's: Celery's redirect would prefix
            # each with its own text and log it again at WARNING, whatever its level.
            "worker_redirect_stdouts": False,
            # A request that queues a job fails fast (503) when the broker is unreachable.
            "broker_connection_timeout": self.REDIS_TIMEOUT_SECONDS,
            # A worker process takes the next task only once it is free: a task queued behind
            # a long one is left to another worker, not held in this one's buffer.
            "worker_prefetch_multiplier": 1,
            # Beat's schedule without redbeat (no REDIS_URL): a file under instance/, not in
            # whatever directory beat was started from.
            "beat_schedule_filename": str(INSTANCE_DIR / "celery-beat-schedule"),
        }
        if not self.CELERY_BROKER_URL:
            return {
                **common,
                "broker_url": "filesystem://",
                "broker_transport_options": {
                    "data_folder_in": str(INSTANCE_DIR / "celery-queue"),
                    "data_folder_out": str(INSTANCE_DIR / "celery-queue"),
                    # Kombu's exchange tables (by default written into the working directory).
                    "control_folder": str(INSTANCE_DIR / "celery-control"),
                },
                "result_backend": None,
            }
        settings: dict[str, Any] = {
            **common,
            "broker_url": self.CELERY_BROKER_URL,
            "result_backend": self.REDIS_URL,
            "broker_transport_options": {
                "visibility_timeout": self.CELERY_VISIBILITY_TIMEOUT,
                **self.REDIS_CLIENT_OPTIONS,
            },
            "redis_socket_connect_timeout": self.REDIS_TIMEOUT_SECONDS,
            "redis_socket_timeout": self.REDIS_TIMEOUT_SECONDS,
        }
        if self.REDIS_URL:
            # One beat across all machines: redbeat holds a lock in Redis, so a second beat
            # process waits instead of scheduling every job twice. The holder renews the lock
            # at least every loop; a waiting beat tries for it every loop, so when the holder
            # dies without releasing it (a killed process, a lost machine), another takes over
            # within the lock's timeout plus one loop.
            # A beat rides out Redis going away (tasks.beat).
            settings.update(
                beat_scheduler="tasks.beat:RedBeatSchedulerRidingOutages",
                beat_max_loop_interval=self.BEAT_MAX_LOOP_SECONDS,
                redbeat_redis_url=self.REDIS_URL,
                redbeat_redis_options=self.REDIS_CLIENT_OPTIONS,
                redbeat_lock_timeout=self.BEAT_MAX_LOOP_SECONDS * 5,
            )
        return settings


class DevelopmentConfig(Config):
    pass


class TestingConfig(Config):
    ENV_NAME = "testing"
    TESTING = True

    def __init__(self) -> None:
        super().__init__()
        self.RATELIMIT_ENABLED = os.environ.get("RATELIMIT_ENABLED", "false").lower() == "true"


class ProductionConfig(Config):
    ENV_NAME = "production"

    def __init__(self) -> None:
        super().__init__()
        # Without Redis, each process would count rate limits in its own memory and queue jobs
        # in its own machine's files, and every beat would run every job; /metrics shows
        # revenue; Stripe sends buyers back to PUBLIC_BASE_URL, whose default is this machine.
        needed = ["JWT_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"]
        if self.STRIPE_SECRET_KEY:
            needed.append("PUBLIC_BASE_URL")
        missing = [name for name in needed if not os.environ.get(name)]
        if missing:
            raise ConfigurationError(f"production needs {', '.join(missing)} in the environment")
        if self.DEMO_MODE:
            raise ConfigurationError(
                "DEMO_MODE signs anyone in as the demo user: not in production"
            )
        if len(self.JWT_SECRET_KEY) < 32:
            raise ConfigurationError("JWT_SECRET_KEY must be at least 32 characters in production")
        if len(self.METRICS_TOKEN or "") < 32:
            raise ConfigurationError("METRICS_TOKEN must be at least 32 characters in production")
        previous = self.JWT_PREVIOUS_SECRET_KEY
        if previous is not None and len(previous) < 32:
            raise ConfigurationError(
                "JWT_PREVIOUS_SECRET_KEY must be at least 32 characters in production"
            )
        for name in ("PUBLIC_BASE_URL", "STRIPE_API_BASE"):
            if not _https_or_loopback(getattr(self, name)):
                raise ConfigurationError(
                    f"{name} must be https in production (plain http only on a loopback address)"
                )
        if self.WEBHOOK_ALLOW_PRIVATE:
            raise ConfigurationError(
                "WEBHOOK_ALLOW_PRIVATE lets webhooks reach this network's own hosts:"
                " not in production"
            )
        if previous == self.JWT_SECRET_KEY:
            raise ConfigurationError(
                "JWT_PREVIOUS_SECRET_KEY is JWT_SECRET_KEY itself: JWT_SECRET_KEY is the new key"
            )


def _https_or_loopback(url: str | None) -> bool:
    """Unset, https, or plain http to a loopback address (a fake on this machine)."""
    if url is None:
        return True
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    try:
        loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    return parts.scheme == "http" and loopback


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def load_config(env_name: str | None = None) -> Config:
    name = env_name or os.environ.get("CREDITAPP_ENV", "development")
    if name not in CONFIGS:
        raise ConfigurationError(f"CREDITAPP_ENV must be one of {', '.join(CONFIGS)}, got {name!r}")
    return CONFIGS[name]()
