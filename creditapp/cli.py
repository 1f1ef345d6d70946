"""Flask CLI commands: users, credit, pricing and demo data (`flask --app wsgi --help`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.accounts.models import Team
from creditapp.auth import sessions, users
from creditapp.auth.models import User
from creditapp.auth.tokens import issue_access_token
from creditapp.chat import service as chat
from creditapp.chat.models import Character
from creditapp.database import write_transaction
from creditapp.errors import CreditAppError
from creditapp.extensions import db
from creditapp.jobs import JOBS, run_job
from creditapp.ledger.models import ADMIN_GRANT_SOURCES, REASON_CHARS
from creditapp.money import AmountError, format_credits, parse_credits
from creditapp.pricing import book, catalogue
from creditapp.pricing.models import Price
from creditapp.text import blank, is_text

CLI_CONTEXT = ledger.AuditContext(actor_type="admin", actor_id="cli")

users_cli = AppGroup("users", help="Create users and issue their access tokens.")
credit_cli = AppGroup("credit", help="Grant credits and reconcile the ledger.")
demo_cli = AppGroup("demo", help="Demo data for the embedded default.")
pricing_cli = AppGroup("pricing", help="The price book.")
jobs_cli = AppGroup("jobs", help="Run a background job in the foreground.")


def _user_json(user: User) -> str:
    return json.dumps(
        {"id": str(user.id), "email": user.email, "role": user.role, "tier": user.tier_name}
    )


def _fail_on_domain_error(error: CreditAppError) -> click.ClickException:
    detail = f" {json.dumps(error.details)}" if error.details else ""
    return click.ClickException(f"{error.code}: {error.message}{detail}")


def _audit(user: User, action: str, now: datetime, details: dict[str, str]) -> None:
    """Audit what the CLI did to a user, on their personal account."""
    ledger.record_action(
        db.session,
        action=action,
        context=CLI_CONTEXT,
        now=now,
        account_id=accounts.of_user(db.session, user.id),
        details=details,
    )


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option("--tier", "tier_name", default=users.DEFAULT_TIER, show_default=True)
def create_user(email: str, admin: bool, tier_name: str) -> None:
    """Create a user with their account and first subscription grant, audited as
    `user_created` (an admin's role is given here only); print it as JSON."""
    try:
        with write_transaction(db.session):
            now = datetime.now(UTC)
            user = users.create(
                db.session,
                email=email,
                role="admin" if admin else "user",
                tier_name=tier_name,
                context=CLI_CONTEXT,
                now=now,
            )
            _audit(
                user,
                "user_created",
                now,
                {"user_id": str(user.id), "role": user.role, "tier": user.tier_name},
            )
    except CreditAppError as error:
        raise _fail_on_domain_error(error) from error
    click.echo(_user_json(user))


@users_cli.command("token")
@click.option("--email", required=True)
@click.option("--hours", default=24, show_default=True, type=click.IntRange(1, 24 * 30))
def user_token(email: str, hours: int) -> None:
    """Print an access token for the user (of a session of its own), audited as
    `access_token_issued`: whoever holds it acts as the user until it expires."""
    try:
        with write_transaction(db.session):
            now = datetime.now(UTC)
            user = users.get_by_email(db.session, email)
            token = issue_access_token(db.session, user, now=now, expires_in=timedelta(hours=hours))
            expires_at = now + timedelta(hours=hours)
            _audit(user, "access_token_issued", now, {"expires_at": expires_at.isoformat()})
    except CreditAppError as error:
        raise _fail_on_domain_error(error) from error
    click.echo(token)


@users_cli.command("revoke")
@click.option("--email", required=True)
def revoke_user_sessions(email: str) -> None:
    """Revoke every session of the user: all their tokens are refused from now on."""
    try:
        with write_transaction(db.session):
            user = users.get_by_email(db.session, email)
            revoked = sessions.revoke_all(
                db.session,
                user_id=user.id,
                reason="cli",
                context=CLI_CONTEXT,
                now=datetime.now(UTC),
            )
    except CreditAppError as error:
        raise _fail_on_domain_error(error) from error
    click.echo(json.dumps({"email": user.email, "revoked_sessions": revoked}))


@credit_cli.command("grant")
@click.option("--email", required=True)
@click.option("--amount", required=True, help='Credits, e.g. "250" or "0.5".')
@click.option("--reason", required=True)
@click.option(
    "--source",
    default="admin",
    type=click.Choice(ADMIN_GRANT_SOURCES),
    show_default=True,
)
def grant_credit(email: str, amount: str, reason: str, source: str) -> None:
    """Grant credits to a user and print the new balance."""
    try:
        micro = parse_credits(amount)
    except AmountError as error:
        raise click.BadParameter(str(error), param_hint="--amount") from error
    # The API's rule for a reason: 1 to 500 characters the databases store, not only spaces.
    if not is_text(reason, max_length=REASON_CHARS) or blank(reason):
        raise click.BadParameter(
            f"1 to {REASON_CHARS} characters, not only spaces, with no NUL", param_hint="--reason"
        )
    try:
        with write_transaction(db.session):
            user = users.get_by_email(db.session, email)
            result = ledger.grant(
                db.session,
                account_id=accounts.of_user(db.session, user.id),
                amount=micro,
                source=source,
                reason=reason,
                context=CLI_CONTEXT,
                now=datetime.now(UTC),
            )
    except CreditAppError as error:
        raise _fail_on_domain_error(error) from error
    click.echo(
        json.dumps(
            {
                "grant_id": str(result.grant_id),
                "balance": format_credits(result.balance.balance),
                "available": format_credits(result.balance.available),
            }
        )
    )


@credit_cli.command("reconcile")
def reconcile_credit() -> None:
    """Check every ledger invariant of every account; exit 1 if anything drifted."""
    drift = ledger.reconcile(db.session)
    click.echo(
        json.dumps(
            {
                "ran_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "drift": [item.as_wire() for item in drift],
            }
        )
    )
    if drift:
        raise SystemExit(1)


@pricing_cli.command("sync")
def sync_pricing() -> None:
    """Add the bundled genai-prices catalogue's prices to the price book (never rewrites)."""
    with write_transaction(db.session):
        result = catalogue.sync(db.session, context=CLI_CONTEXT, now=datetime.now(UTC))
    click.echo(json.dumps(vars(result)))


@jobs_cli.command("run")
@click.argument("name", type=click.Choice(list(JOBS)))
@click.option("--now", "now_text", help="Run as of this ISO 8601 time (catch-up, tests).")
def run_job_command(name: str, now_text: str | None) -> None:
    """Run one job to completion (the same code the Celery task runs); print its summary."""
    try:
        now = datetime.fromisoformat(now_text) if now_text else datetime.now(UTC)
    except ValueError as error:
        raise click.BadParameter("not an ISO 8601 time", param_hint="--now") from error
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    summary = run_job(name, db.session, now=now, actor="cli", settings=current_app.config)
    click.echo(json.dumps({"job": name, "now": now.isoformat(), **summary}))


DEMO_ADMIN = users.DEMO_ADMIN
DEMO_USER = users.DEMO_USER
DEMO_CREDITS = 1_000 * 1_000_000
DEMO_MODEL = "demo-chat"
# The demo provider's price, in USD per 1M tokens: cents per conversation, so balances visibly move.
DEMO_RATES = book.Rates(input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("0.5"))
DEMO_CHARACTER = "Ada"
# A team the demo user owns, with the demo admin as a member capped per day: the dashboard's
# team switcher, transfers and a member's cap have something to show from the first run.
DEMO_TEAM = "Demo team"
DEMO_TEAM_CREDITS = 500 * 1_000_000
DEMO_MEMBER_CAP = 20 * 1_000_000
# The demo user's low-balance alerts, so that the dashboard's alerts have something to show.
DEMO_ALERT_THRESHOLDS = [100 * 1_000_000, 10 * 1_000_000]


def _seed_demo_team(owner: User, member: User, now: datetime) -> None:
    if db.session.scalar(select(Team.id).where(Team.name == DEMO_TEAM)) is not None:
        return
    team_id = teams.create(
        db.session, owner_id=owner.id, name=DEMO_TEAM, context=CLI_CONTEXT, now=now
    ).id
    teams.add_member(
        db.session,
        team_id=team_id,
        actor_id=owner.id,
        email=member.email,
        role="member",
        cap=DEMO_MEMBER_CAP,
        cap_period="day",
        context=CLI_CONTEXT,
        now=now,
    )
    ledger.grant(
        db.session,
        account_id=accounts.of_team(db.session, team_id),
        amount=DEMO_TEAM_CREDITS,
        source="promo",
        reason="demo team credits",
        context=CLI_CONTEXT,
        now=now,
    )


def _seed_demo_chat(admin: User, now: datetime) -> Character:
    if db.session.scalar(select(Price.id).where(Price.provider == "demo")) is None:
        book.add(
            db.session,
            provider="demo",
            model=DEMO_MODEL,
            rates=DEMO_RATES,
            effective_from=now,
            source="demo seed",
            context=CLI_CONTEXT,
            now=now,
        )
    character = db.session.scalar(
        select(Character).where(Character.owner_id == admin.id, Character.name == DEMO_CHARACTER)
    )
    if character is None:
        character = chat.create_character(
            db.session,
            owner=admin,
            name=DEMO_CHARACTER,
            system_prompt="You are Ada, a patient and curious guide. Answer briefly.",
            provider="demo",
            model=DEMO_MODEL,
            public=True,
            context=CLI_CONTEXT,
            now=now,
        )
    return character


@demo_cli.command("seed")
def seed_demo() -> None:
    """Create a demo admin and a demo user with credits, and a team of theirs (once), and print
    their tokens."""
    now = datetime.now(UTC)
    with write_transaction(db.session):
        for email, role, tier in ((DEMO_ADMIN, "admin", "pro"), (DEMO_USER, "user", "free")):
            if users.find_by_email(db.session, email) is not None:
                continue
            user = users.create(
                db.session, email=email, role=role, tier_name=tier, context=CLI_CONTEXT, now=now
            )
            if role == "user":
                account_id = accounts.of_user(db.session, user.id)
                ledger.grant(
                    db.session,
                    account_id=account_id,
                    amount=DEMO_CREDITS,
                    source="promo",
                    reason="demo credits",
                    context=CLI_CONTEXT,
                    now=now,
                )
                ledger.set_thresholds(
                    db.session,
                    account_id=account_id,
                    amounts=DEMO_ALERT_THRESHOLDS,
                    context=CLI_CONTEXT,
                    now=now,
                )
        admin = users.get_by_email(db.session, DEMO_ADMIN)
        character = _seed_demo_chat(admin, now)
        _seed_demo_team(users.get_by_email(db.session, DEMO_USER), admin, now)
    click.echo(
        f"demo character {character.name}: id {character.id}"
        f" ({character.provider}:{character.model})"
    )
    click.echo(f"# Access tokens of {DEMO_ADMIN} and {DEMO_USER} (24 h), to paste into a shell:")
    for variable, email in (("ADMIN_TOKEN", DEMO_ADMIN), ("USER_TOKEN", DEMO_USER)):
        with write_transaction(db.session):
            token = issue_access_token(
                db.session,
                users.get_by_email(db.session, email),
                now=datetime.now(UTC),
                expires_in=timedelta(hours=24),
            )
        click.echo(f"export {variable}={token}")


def register_cli(app: Flask) -> None:
    for group in (users_cli, credit_cli, demo_cli, pricing_cli, jobs_cli):
        app.cli.add_command(group)
