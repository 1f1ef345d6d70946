"""Messages per second through the HTTP endpoint vs. balance reads per second, in one run.

Runs gunicorn on PostgreSQL (a database of its own, created and dropped here) with the real
OpenAI SDK calling a zero-latency fake provider on loopback. Both sides are driven by the same
keep-alive HTTP clients, in interleaved rounds; the ratio messages/balance reads is the
target (>= 0.25). Then, with one client, the median latency of a message against the median
latency of the same chat request sent straight to the fake provider: the difference is what
the message path adds (auth, idempotency, hold, settle, storage).

    make bench            # or: .venv/bin/python bench/messages.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import production_settings, rate  # noqa: E402
from tests.integration.live_server import ServerUrl, live_server  # noqa: E402

ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CLIENTS = 16
WORKERS = 4
THREADS = 4
CONVERSATIONS_PER_USER = 20
MESSAGE = json.dumps({"content": "Hello there, how are you today?", "max_tokens": 64})
# The chat request a message's first turn makes of the provider, for the same call made directly.
DIRECT_BODY: dict[str, Any] = {
    "model": "gpt-bench",
    "max_completion_tokens": 64,
    "messages": [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Hello there, how are you today?"},
    ],
}


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, base: str):
        self.connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: str | None = None
    ) -> int:
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status


def run_clients(make_request: Callable[[Client, int], int], base: str, seconds: float) -> float:
    """Requests per second over CLIENTS connections; every response must be a success."""
    failures: list[int] = []

    def requests(index: int, stop: threading.Event) -> int:
        client, sent = Client(base), 0
        while not stop.is_set():
            status = make_request(client, index)
            if status >= 300:
                failures.append(status)
            sent += 1
        return sent

    per_second = rate(requests, CLIENTS, seconds)
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. HTTP {failures[0]}")
    return per_second


@dataclass(frozen=True)
class Chatter:
    token: str
    conversation_ids: list[int]


def seed(app: Any, user_count: int) -> list[Chatter]:
    """Users with credits for the whole run and conversations of their own with a character
    on a priced model."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from creditapp import accounts, ledger
    from creditapp.auth import users
    from creditapp.auth.tokens import issue_access_token
    from creditapp.chat import service
    from creditapp.database import write_transaction
    from creditapp.extensions import db
    from creditapp.pricing import book

    context = ledger.AuditContext(actor_type="system", actor_id="bench")
    now = datetime.now(UTC)
    chatters = []
    with app.app_context():
        with write_transaction(db.session):
            book.add(
                db.session,
                provider="openai",
                model="gpt-bench",
                rates=book.Rates(Decimal("1"), Decimal("2")),
                effective_from=now - timedelta(minutes=1),
                source="bench",
                context=context,
                now=now,
            )
        for index in range(user_count):
            with write_transaction(db.session):
                user = users.create(
                    db.session, email=f"bench{index}@example.com", context=context, now=now
                )
                ledger.grant(
                    db.session,
                    account_id=accounts.of_user(db.session, user.id),
                    amount=10**15,
                    source="purchase",
                    reason="bench",
                    context=context,
                    now=now,
                )
                character = service.create_character(
                    db.session,
                    owner=user,
                    name="Bench",
                    system_prompt="Answer in one sentence.",
                    provider="openai",
                    model="gpt-bench",
                    public=False,
                    context=context,
                    now=now,
                )
                conversation_ids = [
                    service.create_conversation(
                        db.session, user=user, character_id=character.id, now=now
                    ).id
                    for _ in range(CONVERSATIONS_PER_USER)
                ]
            with write_transaction(db.session):
                token = issue_access_token(
                    db.session, user, now=datetime.now(UTC), expires_in=timedelta(hours=2)
                )
            chatters.append(Chatter(token, conversation_ids))
    return chatters


@dataclass(frozen=True)
class ChatServer:
    base: ServerUrl  # gunicorn's URL, knowing its master's process id
    database: str  # the name of its PostgreSQL database
    database_url: str  # and its URL
    provider_urls: dict[str, str]  # the fake provider's, as environment variables
    chatters: list[Chatter]


@contextmanager
def chat_server(
    users: int, *, workers: int, threads: int, provider_arguments: tuple[str, ...] = ()
) -> Iterator[ChatServer]:
    """gunicorn on a PostgreSQL database of its own (created and dropped here) with `users`
    seeded chatters, the real OpenAI SDK calling the fake provider in a process of its own, as
    a remote provider would be (it must not take the benchmark clients' interpreter lock)."""
    name = f"creditapp_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_providers", *provider_arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        provider_urls = json.loads(fake.stdout.readline())
        env = {
            **provider_urls,
            "DATABASE_URL": url,
            **production_settings(),
            "DATABASE_POOL_SIZE": str(min(threads, 16)),
            "DATABASE_MAX_OVERFLOW": str(max(threads - 16, 0)),
            "PROVIDER_MAX_RETRIES": "0",
            # The tests' servers reach webhook receivers on loopback; production refuses that,
            # and the benchmark sends no webhook.
            "WEBHOOK_ALLOW_PRIVATE": "false",
        }
        os.environ.update(env)
        from flask_migrate import upgrade

        from creditapp import MIGRATIONS_DIR, create_app

        app = create_app()
        with app.app_context():
            upgrade(directory=str(MIGRATIONS_DIR))
        chatters = seed(app, users)
        with live_server(env, workers=workers, threads=threads) as base:
            yield ChatServer(base, name, url, provider_urls, chatters)
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def message_headers(chatter: Chatter, key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {chatter.token}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }


def send_message(client: Client, chatter: Chatter, key: int) -> int:
    """MESSAGE on one of the chatter's conversations (the key picks which), under a fresh
    Idempotency-Key; the response's status."""
    conversation = chatter.conversation_ids[key % CONVERSATIONS_PER_USER]
    return client.request(
        "POST",
        f"/api/conversations/{conversation}/messages",
        message_headers(chatter, f"bench-{key}"),
        MESSAGE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--users",
        type=int,
        default=CLIENTS,
        help="clients share this many users (1: every message on one account row)",
    )
    args = parser.parse_args()

    with chat_server(args.users, workers=WORKERS, threads=THREADS) as server:
        base, chatters = server.base, server.chatters
        keys = itertools.count()

        def send_chatter_message(client: Client, index: int) -> int:
            return send_message(client, chatters[index % len(chatters)], next(keys))

        def read_balance(client: Client, index: int) -> int:
            auth = {"Authorization": f"Bearer {chatters[index % len(chatters)].token}"}
            return client.request("GET", "/api/credit/balance", auth)

        sides = {"messages": send_chatter_message, "balance reads": read_balance}
        rates: dict[str, list[float]] = {side: [] for side in sides}
        run_clients(read_balance, base, 1.0)  # warm up connections and pools
        run_clients(send_chatter_message, base, 1.0)
        for _ in range(args.rounds):
            for side, work in sides.items():
                rates[side].append(run_clients(work, base, args.seconds))
        median = {side: statistics.median(values) for side, values in rates.items()}

        # Added latency: one client, a message vs. the same chat request sent directly.
        provider_root = server.provider_urls["OPENAI_BASE_URL"].removesuffix("/openai/v1")
        app_client, fake_client = Client(base), Client(provider_root)
        direct_body = json.dumps(DIRECT_BODY)
        message_times, direct_times = [], []
        for _ in range(args.latency_samples):
            started = time.perf_counter()
            send_chatter_message(app_client, 0)
            message_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            fake_client.request(
                "POST",
                "/openai/v1/chat/completions",
                {"Content-Type": "application/json"},
                direct_body,
            )
            direct_times.append(time.perf_counter() - started)

        message_ms = statistics.median(message_times) * 1000
        direct_ms = statistics.median(direct_times) * 1000
        ratio = median["messages"] / median["balance reads"]
        print(
            f"gunicorn {WORKERS} workers x {THREADS} threads on PostgreSQL, {CLIENTS} clients"
            f" ({args.users} users),"
            f" zero-latency fake provider; median of {args.rounds} interleaved rounds of"
            f" {args.seconds:g} s"
        )
        print(f"  messages/s       {median['messages']:8.1f}")
        print(f"  balance reads/s  {median['balance reads']:8.1f}")
        print(f"  ratio            {ratio:8.2f}   (target >= 0.25)")
        print(
            f"  latency, one client: message {message_ms:.1f} ms, direct provider call"
            f" {direct_ms:.1f} ms, added by the message path {message_ms - direct_ms:.1f} ms"
        )


if __name__ == "__main__":
    main()
