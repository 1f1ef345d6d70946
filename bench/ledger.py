"""Hold+settle pairs per second through the ledger module vs. the same work as raw SQL.

Runs on PostgreSQL in a database of its own (created and dropped here), 8 threads, twice:
spread over 10,000 accounts and on one hot account. The raw baseline does, per operation, a
conditional UPDATE + a ledger INSERT + an audit INSERT through the same driver (psycopg 3),
into the ledger's own tables (with their keys and constraints) on accounts of its own; the
same statements into bare tables without constraints are printed for comparison.
Prints the rates and the ratios; see docs/benchmarks.md for recorded results.

With `--team`, instead: a team's account spent by its 16 members, each hold checked against the
member's monthly cap in the hold's own update (`caps=`, `spender=`), against the same pairs on
one hot personal account with no cap, interleaved in the same run: what the cap check costs a
hot account (issue 28's target: the team keeps at least 80% of the hot throughput).

    make bench            # or: .venv/bin/python bench/ledger.py [--seconds 10] [--team]
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

from bench.harness import production_settings, rate  # noqa: E402

THREADS = 8
ACCOUNTS = 10_000  # per side: the ledger uses 1..ACCOUNTS, raw SQL the next ACCOUNTS
HOLD = 5_000  # µcr reserved per hold
CHARGE = 3_500  # µcr charged per settle
START_BALANCE = 10**12  # enough that no hold is refused during a run
TEAM_MEMBERS = 16  # users 2..17, the team owned by user 1 (whose account is the hot one)
MEMBER_CEILING = 10**12  # a member's cap: checked on every hold, never reached during a run
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


# Who spends: (account, the spender's caps, the spender), drawn per pair.
Spender = tuple[int, tuple[int, ...], int | None]


def uncapped(pick: Callable[[random.Random], int]) -> Callable[[random.Random], Spender]:
    return lambda rng: (pick(rng), (), None)


def ledger_work(app, pick: Callable[[random.Random], Spender]):  # type: ignore[no-untyped-def]
    from creditapp import ledger
    from creditapp.database import write_transaction
    from creditapp.extensions import db

    context = ledger.AuditContext(actor_type="system", actor_id="bench")

    def work(rng: random.Random, stop: threading.Event) -> int:
        pairs = 0
        with app.app_context():
            while not stop.is_set():
                account, caps, spender = pick(rng)
                with write_transaction(db.session) as session:
                    held = ledger.hold(
                        session,
                        account_id=account,
                        amount=HOLD,
                        ttl=timedelta(minutes=10),
                        context=context,
                        now=datetime.now(UTC),
                        caps=caps,
                        spender=spender,
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


def open_team(app) -> tuple[int, list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """A team of user 1's with TEAM_MEMBERS members, each capped per month, its account funded
    as every other: the account, and each member's (user id, cap id)."""
    from creditapp import accounts, ledger
    from creditapp.accounts import teams
    from creditapp.accounts.models import TeamMember
    from creditapp.database import write_transaction
    from creditapp.extensions import db

    context = ledger.AuditContext(actor_type="system", actor_id="bench")
    now = datetime.now(UTC)
    with app.app_context(), write_transaction(db.session) as session:
        team_id = teams.create(session, owner_id=1, name="bench", context=context, now=now).id
        members = []
        for user_id in range(2, 2 + TEAM_MEMBERS):
            teams.add_member(
                session,
                team_id=team_id,
                actor_id=1,
                email=f"bench{user_id}@example.com",
                role="member",
                cap=MEMBER_CEILING,
                cap_period="month",
                context=context,
                now=now,
            )
            member = session.get(TeamMember, (team_id, user_id))
            assert member is not None
            members.append((user_id, member.cap_id))
        account = accounts.of_team(session, team_id)
        ledger.grant(
            session,
            account_id=account,
            amount=START_BALANCE,
            source="purchase",
            reason="bench",
            context=context,
            now=now,
        )
    return account, members


def interleaved(sides: dict[str, Callable], args: argparse.Namespace) -> dict[str, float]:  # type: ignore[type-arg]
    """The median rate of each side over the rounds, the sides taking turns in each, so that
    every side sees the same machine weather."""
    rates = rounds_of(sides, args)
    return {side: statistics.median(values) for side, values in rates.items()}


def rounds_of(sides: dict[str, Callable], args: argparse.Namespace) -> dict[str, list[float]]:  # type: ignore[type-arg]
    """Each side's rate in each round, the sides taking turns within a round."""
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, work in sides.items():
            rates[side].append(run_threads(work, args.seconds))
    if args.verbose:
        print(f"    rounds: {rates}")
    return rates


def compare_raw(app, url: str, args: argparse.Namespace) -> list[int]:  # type: ignore[no-untyped-def]
    """The ledger against raw SQL, spread and hot, printed; the accounts spent."""
    scenarios: dict[str, Callable[[random.Random], int]] = {
        "spread": lambda rng: rng.randint(1, ACCOUNTS),
        "hot": lambda rng: 1,
    }
    raw_side = ACCOUNTS  # raw SQL on the ledger's tables uses accounts of its own
    for label, pick in scenarios.items():

        def on_raw_side(rng: random.Random, pick: Callable[[random.Random], int] = pick) -> int:
            return raw_side + pick(rng)

        median = interleaved(
            {
                "ledger": ledger_work(app, uncapped(pick)),
                "raw": raw_work(url, RAW_ON_LEDGER_TABLES, on_raw_side),
                "bare": raw_work(url, RAW_ON_BARE_TABLES, pick),
            },
            args,
        )
        print(
            f"  {label:6}  ledger {median['ledger']:7.1f}   raw SQL {median['raw']:7.1f}"
            f"   ledger/raw {median['ledger'] / median['raw']:.2f} (target >= 0.5)"
            f"   | raw SQL on bare tables {median['bare']:7.1f},"
            f" ledger/bare {median['ledger'] / median['bare']:.2f}"
        )
    return list(range(1, ACCOUNTS + 1))


def compare_team(app, args: argparse.Namespace) -> list[int]:  # type: ignore[no-untyped-def]
    """The team against the hot account, printed; the accounts spent, for reconciliation."""
    team_account, members = open_team(app)

    def member(rng: random.Random) -> Spender:
        user_id, cap_id = members[rng.randrange(len(members))]
        return team_account, (cap_id,), user_id

    rates = rounds_of(
        {
            "hot": ledger_work(app, uncapped(lambda rng: 1)),
            "team": ledger_work(app, member),
        },
        args,
    )
    median = {side: statistics.median(values) for side, values in rates.items()}
    # The ratio within each round compares the two sides under the same machine weather (a
    # shared machine's throughput drifts over a run by more than the cap costs); its median
    # is the figure the target is read on, the ratio of the medians beside it.
    paired = statistics.median(
        team / hot for team, hot in zip(rates["team"], rates["hot"], strict=True)
    )
    print(
        f"  hot account, no cap {median['hot']:7.1f}   team account, {len(members)} members"
        f" each capped {median['team']:7.1f}   team/hot within a round (median) {paired:.2f}"
        f" (target >= 0.80); ratio of the medians {median['team'] / median['hot']:.2f}"
    )
    return [1, team_account]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--team", action="store_true", help="a capped team against hot")
    args = parser.parse_args()

    name = f"creditapp_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        os.environ.update(
            DATABASE_URL=url,
            DATABASE_POOL_SIZE=str(THREADS),
            **production_settings(),
        )
        from flask_migrate import upgrade

        from creditapp import MIGRATIONS_DIR, create_app

        app = create_app()
        with app.app_context():
            upgrade(directory=str(MIGRATIONS_DIR))
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(SEED_SQL)

        print(
            f"hold+settle pairs/s on PostgreSQL, {THREADS} threads; median of {args.rounds}"
            f" interleaved rounds of {args.seconds:g} s per side"
        )
        spent = compare_team(app, args) if args.team else compare_raw(app, url, args)
        with app.app_context():
            from creditapp import ledger
            from creditapp.extensions import db

            drift = ledger.reconcile(db.session, account_ids=spent)
            print(f"  reconciliation of the ledger's accounts after the run: {len(drift)} drift")
            db.session.remove()
            db.engine.dispose()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
