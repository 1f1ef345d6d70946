"""The flask CLI commands of contract section 7, run through Click as a shell would run them."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from creditapp.cli import DEMO_ADMIN, DEMO_USER
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.helpers import audited


def cli(app: Flask, *args: str):  # type: ignore[no-untyped-def]
    return app.test_cli_runner().invoke(args=list(args))


def test_users_create_prints_the_user_and_token_authenticates(
    app: Flask, client: FlaskClient
) -> None:
    created = cli(app, "users", "create", "--email", "Ann@Example.com", "--tier", "pro")
    assert created.exit_code == 0, created.output
    user = json.loads(created.stdout)
    assert user == {"id": user["id"], "email": "ann@example.com", "role": "user", "tier": "pro"}
    token = cli(app, "users", "token", "--email", "ann@example.com").stdout.strip()
    balance = client.get("/api/credit/balance", headers={"Authorization": f"Bearer {token}"})
    assert balance.get_json()["balance"] == "5000"


def test_users_create_refuses_duplicates_and_bad_input(app: Flask) -> None:
    assert cli(app, "users", "create", "--email", "a@example.com", "--admin").exit_code == 0
    duplicate = cli(app, "users", "create", "--email", "A@example.com")
    assert duplicate.exit_code == 1 and "conflict" in duplicate.output
    assert cli(app, "users", "create", "--email", "not-an-email").exit_code == 1
    assert cli(app, "users", "create", "--email", "b@example.com", "--tier", "gold").exit_code == 1
    assert cli(app, "users", "token", "--email", "nobody@example.com").exit_code == 1


def test_credit_grant_and_reconcile(app: Flask) -> None:
    cli(app, "users", "create", "--email", "c@example.com")
    granted = cli(
        app, "credit", "grant", "--email", "c@example.com", "--amount", "2.5", "--reason", "support"
    )
    assert granted.exit_code == 0, granted.output
    assert json.loads(granted.stdout) | {"grant_id": None} == {
        "grant_id": None,
        "balance": "102.5",
        "available": "102.5",
    }
    assert (
        cli(
            app, "credit", "grant", "--email", "c@example.com", "--amount", "1.5e3", "--reason", "x"
        ).exit_code
        == 2
    )
    clean = cli(app, "credit", "reconcile")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["drift"] == []
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(text("UPDATE grants SET remaining = remaining - 1"))
        db.session.remove()
    drifted = cli(app, "credit", "reconcile")
    assert drifted.exit_code == 1
    assert {d["invariant"] for d in json.loads(drifted.stdout)["drift"]} >= {
        "balance == sum(grants' remaining)"
    }


def test_demo_seed_is_repeatable_and_its_tokens_work(app: Flask, client: FlaskClient) -> None:
    first = cli(app, "demo", "seed")
    second = cli(app, "demo", "seed")
    assert first.exit_code == second.exit_code == 0
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in second.output.splitlines()
        if line.startswith("export ")
    )
    admin_token, user_token = exports.pop("ADMIN_TOKEN"), exports.pop("USER_TOKEN")
    assert exports == {}
    me = client.get("/api/me", headers={"Authorization": f"Bearer {admin_token}"}).get_json()
    assert (me["email"], me["role"]) == (DEMO_ADMIN, "admin")
    balance = client.get(
        "/api/credit/balance", headers={"Authorization": f"Bearer {user_token}"}
    ).get_json()
    # 100 credits of the free tier plus 1,000 demo credits, granted once however often seeded.
    assert balance["balance"] == "1100"
    assert DEMO_USER in second.output


def test_jobs_run_prints_its_summary_and_refuses_unknown_jobs_and_times(app: Flask) -> None:
    cli(app, "users", "create", "--email", "j@example.com")
    ran = cli(app, "jobs", "run", "reconcile", "--now", "2027-03-01T10:00:00Z")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout) == {
        "job": "reconcile",
        "now": "2027-03-01T10:00:00+00:00",
        "checked_accounts": 1,
        "drift": 0,
        "unbilled_calls": 0,
        "shortfalls": 0,
    }
    naive = cli(app, "jobs", "run", "expire-holds", "--now", "2027-03-01T10:00:00")
    assert json.loads(naive.stdout) == {
        "job": "expire-holds",
        "now": "2027-03-01T10:00:00+00:00",  # a time without a zone is UTC
        "expired": 0,
    }
    webhooks = cli(app, "jobs", "run", "deliver-webhooks", "--now", "2027-03-01T10:00:00Z")
    assert json.loads(webhooks.stdout) == {
        "job": "deliver-webhooks",
        "now": "2027-03-01T10:00:00+00:00",
        "delivered": 0,
        "retrying": 0,
        "failed": 0,
        "url_refused": 0,
        "lease_lost": 0,
        "disabled": 0,
        "purged_deliveries": 0,
        "purged_events": 0,
    }
    assert cli(app, "jobs", "run", "launder-money").exit_code == 2
    assert cli(app, "jobs", "run", "reconcile", "--now", "yesterday").exit_code == 2


def test_pricing_sync_adds_the_catalogue_once(app: Flask) -> None:
    first = cli(app, "pricing", "sync")
    assert first.exit_code == 0, first.output
    added = json.loads(first.stdout)
    again = json.loads(cli(app, "pricing", "sync").stdout)
    assert again["added"] == 0 < added["added"]
    with app.app_context():
        rows = db.session.scalar(text("SELECT COUNT(*) FROM prices"))
        openai = db.session.scalar(
            text("SELECT COUNT(*) FROM prices WHERE provider = 'openai' AND model = 'gpt-4o'")
        )
        db.session.remove()
    assert rows == added["added"] and openai >= 1


def test_what_an_operator_does_through_the_cli_isaudited(app: Flask) -> None:
    """An admin made, a token issued (whoever holds it acts as the user), every session
    revoked, and the catalogue's prices: each an audit record of the CLI's."""
    user = json.loads(cli(app, "users", "create", "--email", "op@example.com", "--admin").stdout)
    assert cli(app, "users", "token", "--email", "op@example.com", "--hours", "2").exit_code == 0
    revoked = cli(app, "users", "revoke", "--email", "op@example.com")
    assert json.loads(revoked.stdout) == {"email": "op@example.com", "revoked_sessions": 1}
    created, issued, signed_out = audited(
        app, "user_created", "access_token_issued", "sessions_revoked"
    )
    assert created == (
        "user_created",
        "admin",
        "cli",
        {"user_id": user["id"], "role": "admin", "tier": "free"},
    )
    assert issued[:3] == ("access_token_issued", "admin", "cli")
    assert set(issued[3]) == {"expires_at"}
    assert signed_out == (
        "sessions_revoked",
        "admin",
        "cli",
        {"revoked_sessions": 1, "reason": "cli"},
    )
    added = json.loads(cli(app, "pricing", "sync").stdout)["added"]
    prices = audited(app, "price_added")
    assert len(prices) == added
    assert {(action, actor) for action, _type, actor, _ in prices} == {("price_added", "cli")}
    assert all(str(details["source"]).startswith("genai-prices ") for *_, details in prices)


@pytest.mark.parametrize("reason", ["", "   ", "no\x00pe", "x" * 501])
def test_credit_grant_refuses_a_reason_the_api_refuses(app: Flask, reason: str) -> None:
    cli(app, "users", "create", "--email", "r@example.com")
    refused = cli(
        app, "credit", "grant", "--email", "r@example.com", "--amount", "5", "--reason", reason
    )
    assert refused.exit_code == 2 and "--reason" in refused.output
    assert audited(app, "grant") == []
