"""Hold+settle pairs per second through the ledger module vs. the same work as raw SQL.

Runs on PostgreSQL in a database of its own (created and dropped here), 8 threads, twice:
spread over 10,000 accounts and on one hot account. The raw baseline does, per operation, a
conditional UPDATE + a ledger INSERT + an audit INSERT through the same driver (psycopg 3).
Prints both rates and the ratios; see docs/benchmarks.md for recorded results.

    make bench            # or: .venv/bin/python bench/ledger.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THREADS = 8
ACCOUNTS = 10_000
HOLD = 5_000  # µcr reserved per hold
CHARGE = 3_500  # µcr charged per settle
START_BALANCE = 10**12  # enough that no hold is refused during a run
ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

SEED_SQL = f"""
INSERT INTO users (id, email, role, tier_name, period_anchor, created_at)
  SELECT n, 'bench' || n || '@example.com', 'user', 'free', now(), now()
  FROM generate_series(1, {ACCOUNTS}) AS n;
INSERT INTO accounts (id, user_id, balance, reserved, last_seq, created_at)
  SELECT n, n, {START_BALANCE}, 0, 1, now() FROM generate_series(1, {ACCOUNTS}) AS n;
INSERT INTO grants (id, account_id, source, amount, remaining, created_at)
  SELECT n, n, 'purchase', {START_BALANCE}, {START_BALANCE}, now()
  FROM generate_series(1, {ACCOUNTS}) AS n;
INSERT INTO audit_records (id, actor_type, action, account_id, details, created_at)
  SELECT n, 'system', 'grant', n, '{{}}', now() FROM generate_series(1, {ACCOUNTS}) AS n;
INSERT INTO ledger_entries (account_id, seq, type, amount, balance_before, balance_after,
                            grant_id, audit_id, created_at)
  SELECT n, 1, 'grant', {START_BALANCE}, 0, {START_BALANCE}, n, n, now()
  FROM generate_series(1, {ACCOUNTS}) AS n;
SELECT setval(pg_get_serial_sequence(t, 'id'), {ACCOUNTS})
  FROM unnest(ARRAY['users', 'accounts', 'grants', 'audit_records']) AS t;

CREATE TABLE raw_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL,
                           reserved bigint NOT NULL);
CREATE TABLE raw_entries (id bigserial PRIMARY KEY, account_id bigint NOT NULL,
                          amount bigint NOT NULL, balance_after bigint NOT NULL,
                          created_at timestamptz NOT NULL);
CREATE TABLE raw_audit (id bigserial PRIMARY KEY, account_id bigint NOT NULL,
                        action text NOT NULL, details jsonb NOT NULL,
                        created_at timestamptz NOT NULL);
INSERT INTO raw_accounts SELECT n, {START_BALANCE}, 0 FROM generate_series(1, {ACCOUNTS}) n;
"""


def run_threads(work: Callable[[random.Random, threading.Event], int], seconds: float) -> float:
    """Run `work` on THREADS threads for `seconds`; return completed pairs per second."""
    stop = threading.Event()
    counts = [0] * THREADS
    ready = threading.Barrier(THREADS + 1)

    def worker(index: int) -> None:
        rng = random.Random(index)
        ready.wait()
        counts[index] = work(rng, stop)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def ledger_work(app, pick: Callable[[random.Random], int]):  # type: ignore[no-untyped-def]
    from creditapp import ledger
    from creditapp.database import write_transaction
    from creditapp.extensions import db

    context = ledger.AuditContext(actor_type="system", actor_id="bench")

    def work(rng: random.Random, stop: threading.Event) -> int:
        pairs = 0
        with app.app_context():
            while not stop.is_set():
                account = pick(rng)
                with write_transaction(db.session) as session:
                    held = ledger.hold(
                        session,
                        account_id=account,
                        amount=HOLD,
                        ttl=timedelta(minutes=10),
                        context=context,
                        now=datetime.now(UTC),
                    )
                with write_transaction(db.session) as session:
                    ledger.settle(
                        session,
                        hold_id=held.hold_id,
                        actual=CHARGE,
                        context=context,
                        now=datetime.now(UTC),
                    )
                pairs += 1
            db.session.remove()
        return pairs

    return work


def raw_work(url: str, pick: Callable[[random.Random], int]):  # type: ignore[no-untyped-def]
    def operation(cursor: psycopg.Cursor, update: str, params: tuple, action: str) -> None:
        cursor.execute(update, params)
        account, balance, amount = cursor.fetchone()  # type: ignore[misc]
        cursor.execute(
            "INSERT INTO raw_entries (account_id, amount, balance_after, created_at)"
            " VALUES (%s, %s, %s, now())",
            (account, amount, balance),
        )
        cursor.execute(
            "INSERT INTO raw_audit (account_id, action, details, created_at)"
            " VALUES (%s, %s, %s, now())",
            (account, action, '{"bench": true}'),
        )

    def work(rng: random.Random, stop: threading.Event) -> int:
        pairs = 0
        with psycopg.connect(url) as connection:
            while not stop.is_set():
                account = pick(rng)
                with connection.transaction(), connection.cursor() as cursor:
                    operation(
                        cursor,
                        "UPDATE raw_accounts SET reserved = reserved + %s"
                        " WHERE id = %s AND balance - reserved >= %s"
                        " RETURNING id, balance, 0",
                        (HOLD, account, HOLD),
                        "hold",
                    )
                with connection.transaction(), connection.cursor() as cursor:
                    operation(
                        cursor,
                        "UPDATE raw_accounts SET reserved = reserved - %s, balance = balance - %s"
                        " WHERE id = %s RETURNING id, balance, -%s::bigint",
                        (HOLD, CHARGE, account, CHARGE),
                        "settle",
                    )
                pairs += 1
        return pairs

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    name = f"creditapp_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        os.environ.update(
            DATABASE_URL=url,
            CREDITAPP_ENV="production",
            DATABASE_POOL_SIZE=str(THREADS),
            JWT_SECRET_KEY=secrets.token_hex(32),
            RATELIMIT_ENABLED="false",
        )
        os.environ.pop("REDIS_URL", None)
        from flask_migrate import upgrade

        from creditapp import MIGRATIONS_DIR, create_app

        app = create_app()
        with app.app_context():
            upgrade(directory=str(MIGRATIONS_DIR))
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(SEED_SQL)

        scenarios = {
            "spread": lambda rng: rng.randint(1, ACCOUNTS),
            "hot": lambda rng: 1,
        }
        print(
            f"hold+settle pairs/s on PostgreSQL, {THREADS} threads; median of {args.rounds}"
            f" interleaved rounds of {args.seconds:g} s per side"
        )
        for label, pick in scenarios.items():
            raw_rates, ledger_rates = [], []
            # Interleaved rounds, so that both sides see the same machine weather.
            for _ in range(args.rounds):
                raw_rates.append(run_threads(raw_work(url, pick), args.seconds))
                ledger_rates.append(run_threads(ledger_work(app, pick), args.seconds))
            raw, through_ledger = statistics.median(raw_rates), statistics.median(ledger_rates)
            print(
                f"  {label:6}  ledger {through_ledger:8.1f}   raw SQL {raw:8.1f}"
                f"   ledger/raw {through_ledger / raw:.2f}  (target >= 0.5)"
            )
        with app.app_context():
            from creditapp import ledger
            from creditapp.extensions import db

            drift = ledger.reconcile(db.session)
            print(f"  reconciliation after the run: {len(drift)} drift")
            db.session.remove()
            db.engine.dispose()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
