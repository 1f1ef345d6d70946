"""Hold+settle pairs per second through the ledger module vs. the same work as raw SQL.

Runs on PostgreSQL in a database of its own (created and dropped here), 8 threads, twice:
spread over 10,000 accounts and on one hot account. The raw baseline does, per operation, a
conditional UPDATE + a ledger INSERT + an audit INSERT through the same driver (psycopg 3),
into the ledger's own tables (with their keys and constraints) on accounts of its own; the
same statements into bare tables without constraints are printed for comparison.
Prints the rates and the ratios; see docs/benchmarks.md for recorded results.

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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import rate  # noqa: E402

THREADS = 8
ACCOUNTS = 10_000  # per side: the ledger uses 1..ACCOUNTS, raw SQL the next ACCOUNTS
HOLD = 5_000  # µcr reserved per hold
CHARGE = 3_500  # µcr charged per settle
START_BALANCE = 10**12  # enough that no hold is refused during a run
ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

SEED_SQL = f"""
INSERT INTO users (id, email, role, tier_name, period_anchor, created_at)
  SELECT n, 'bench' || n || '@example.com', 'user', 'free', now(), now()
  FROM generate_series(1, {2 * ACCOUNTS}) AS n;
INSERT INTO accounts (id, user_id, balance, reserved, last_seq, created_at)
  SELECT n, n, {START_BALANCE}, 0, 1, now() FROM generate_series(1, {2 * ACCOUNTS}) AS n;
INSERT INTO grants (id, account_id, source, amount, remaining, created_at)
  SELECT n, n, 'purchase', {START_BALANCE}, {START_BALANCE}, now()
  FROM generate_series(1, {2 * ACCOUNTS}) AS n;
INSERT INTO audit_records (id, actor_type, action, account_id, details, created_at)
  SELECT n, 'system', 'grant', n, '{{}}', now() FROM generate_series(1, {2 * ACCOUNTS}) AS n;
INSERT INTO ledger_entries (account_id, seq, type, amount, balance_before, balance_after,
                            grant_id, audit_id, created_at)
  SELECT n, 1, 'grant', {START_BALANCE}, 0, {START_BALANCE}, n, n, now()
  FROM generate_series(1, {2 * ACCOUNTS}) AS n;
SELECT setval(pg_get_serial_sequence(t, 'id'), {2 * ACCOUNTS})
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
    """Completed pairs per second of `work` on THREADS threads, each with a seeded random."""
    return rate(lambda index, stop: work(random.Random(index), stop), THREADS, seconds)


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


# Raw SQL, three statements per operation. Parameters: (hold or charge amount, account).
RAW_ON_LEDGER_TABLES = {
    "hold": (
        "UPDATE accounts SET reserved = reserved + %(amount)s"
        " WHERE id = %(account)s AND balance - reserved >= %(amount)s"
        " RETURNING balance, reserved, last_seq",
        "INSERT INTO holds (account_id, amount, status, uncollected, expires_at, created_at)"
        " VALUES (%(account)s, %(amount)s, 'pending', 0, now() + interval '10 minutes', now())",
        "INSERT INTO audit_records (actor_type, action, account_id, balance_after,"
        " reserved_after, details, created_at)"
        " VALUES ('system', 'hold', %(account)s, %(balance)s, %(reserved)s, '{}', now())"
        " RETURNING id",
    ),
    "settle": (
        "UPDATE accounts SET balance = balance - %(charge)s, reserved = reserved - %(amount)s,"
        " last_seq = last_seq + 1 WHERE id = %(account)s RETURNING balance, reserved, last_seq",
        "INSERT INTO audit_records (actor_type, action, account_id, balance_after,"
        " reserved_after, details, created_at)"
        " VALUES ('system', 'settle', %(account)s, %(balance)s, %(reserved)s, '{}', now())"
        " RETURNING id",
        "INSERT INTO ledger_entries (account_id, seq, prev_seq, type, amount, balance_before,"
        " balance_after, grant_id, audit_id, created_at)"
        " VALUES (%(account)s, %(seq)s, %(seq)s - 1, 'charge', -%(charge)s,"
        " %(balance)s + %(charge)s, %(balance)s, %(account)s, %(audit)s, now())",
    ),
}
RAW_ON_BARE_TABLES = {
    "hold": (
        "UPDATE raw_accounts SET reserved = reserved + %(amount)s"
        " WHERE id = %(account)s AND balance - reserved >= %(amount)s"
        " RETURNING balance, reserved, 0",
        "INSERT INTO raw_entries (account_id, amount, balance_after, created_at)"
        " VALUES (%(account)s, 0, %(balance)s, now())",
        "INSERT INTO raw_audit (account_id, action, details, created_at)"
        " VALUES (%(account)s, 'hold', '{}', now()) RETURNING id",
    ),
    "settle": (
        "UPDATE raw_accounts SET reserved = reserved - %(amount)s, balance = balance - %(charge)s"
        " WHERE id = %(account)s RETURNING balance, reserved, 0",
        "INSERT INTO raw_audit (account_id, action, details, created_at)"
        " VALUES (%(account)s, 'settle', '{}', now()) RETURNING id",
        "INSERT INTO raw_entries (account_id, amount, balance_after, created_at)"
        " VALUES (%(account)s, -%(charge)s, %(balance)s, now())",
    ),
}


def raw_work(url: str, statements: dict, pick: Callable[[random.Random], int]):  # type: ignore[no-untyped-def,type-arg]
    def operation(cursor: psycopg.Cursor, steps: tuple[str, ...], params: dict) -> None:  # type: ignore[type-arg]
        update, first_insert, second_insert = steps
        cursor.execute(update, params)
        params["balance"], params["reserved"], params["seq"] = cursor.fetchone()  # type: ignore[misc]
        cursor.execute(first_insert, params)
        if cursor.description:
            params["audit"] = cursor.fetchone()[0]  # type: ignore[index]
        cursor.execute(second_insert, params)

    def work(rng: random.Random, stop: threading.Event) -> int:
        pairs = 0
        with psycopg.connect(url) as connection:
            while not stop.is_set():
                params = {"account": pick(rng), "amount": HOLD, "charge": CHARGE}
                for step in ("hold", "settle"):
                    with connection.transaction(), connection.cursor() as cursor:
                        operation(cursor, statements[step], dict(params))
                pairs += 1
        return pairs

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="print every round")
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
        raw_side = ACCOUNTS  # raw SQL on the ledger's tables uses accounts of its own
        print(
            f"hold+settle pairs/s on PostgreSQL, {THREADS} threads; median of {args.rounds}"
            f" interleaved rounds of {args.seconds:g} s per side"
        )
        for label, pick in scenarios.items():
            sides = {
                "ledger": ledger_work(app, pick),
                "raw": raw_work(url, RAW_ON_LEDGER_TABLES, lambda rng, p=pick: raw_side + p(rng)),
                "bare": raw_work(url, RAW_ON_BARE_TABLES, pick),
            }
            rates: dict[str, list[float]] = {side: [] for side in sides}
            # Interleaved rounds, so that every side sees the same machine weather.
            for _ in range(args.rounds):
                for side, work in sides.items():
                    rates[side].append(run_threads(work, args.seconds))
            median = {side: statistics.median(values) for side, values in rates.items()}
            if args.verbose:
                print(f"    rounds: {rates}")
            print(
                f"  {label:6}  ledger {median['ledger']:7.1f}   raw SQL {median['raw']:7.1f}"
                f"   ledger/raw {median['ledger'] / median['raw']:.2f} (target >= 0.5)"
                f"   | raw SQL on bare tables {median['bare']:7.1f},"
                f" ledger/bare {median['ledger'] / median['bare']:.2f}"
            )
        with app.app_context():
            from creditapp import ledger
            from creditapp.extensions import db

            drift = ledger.reconcile(db.session, account_ids=list(range(1, ACCOUNTS + 1)))
            print(f"  reconciliation of the ledger's accounts after the run: {len(drift)} drift")
            db.session.remove()
            db.engine.dispose()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
