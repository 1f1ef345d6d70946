"""`/metrics`: Prometheus text that agrees with the database: messages and credits counted
exactly across gunicorn workers, the jobs' runs from whichever worker ran them, drift and open
holds read when scraped; `METRICS_TOKEN` guards it."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from creditapp import ledger
from creditapp.billing.models import UsageRecord
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.metrics import UNPRICED
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    add_price,
    metric_value,
    new_team,
    run_job_at,
    scalar,
    start_conversation,
)
from tests.integration.gateway_client import make_key
from tests.integration.live_server import call, celery_process, live_server
from tests.integration.tcp_proxy import TcpProxy


def test_the_database_gauges_and_the_token(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    person = person_factory(credits=5_000_000)
    with app.app_context():
        # A user's account and two teams' accounts drift: three accounts (no team's names a user).
        team_ids = [new_team(person.id, name=name) for name in ("One", "Two")]
        teams = [account for _team, account in team_ids]
        with write_transaction(db.session):
            for team_account in teams:
                ledger.grant(
                    db.session,
                    account_id=team_account,
                    amount=1_000_000,
                    source="promo",
                    reason="tests",
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
        with write_transaction(db.session):
            for account_id in (person.account_id, *teams):
                db.session.execute(
                    text("UPDATE grants SET remaining = remaining - 1 WHERE account_id = :id"),
                    {"id": account_id},
                )
        db.session.remove()
    capsys.readouterr()
    run_job_at(app, "reconcile", utcnow())
    # Each drifting account's log line names its owner, a user or a team.
    drifted = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if '"ledger_drift"' in line
    ]
    assert {(line["account_id"], line["user_id"], line["team_id"]) for line in drifted} == {
        (person.account_id, person.id, None),
        *((account, None, team) for team, account in team_ids),
    }
    body = client.get("/metrics").get_data(as_text=True)
    assert metric_value(body, "creditapp_database_up") == 1
    assert metric_value(body, "creditapp_reconciliation_drift_accounts") == 3
    assert (
        metric_value(body, "creditapp_job_runs_total", job_name="reconcile", outcome="success") == 1
    )
    assert (
        metric_value(body, "creditapp_job_last_success_timestamp_seconds", job_name="reconcile") > 0
    )
    assert metric_value(body, "creditapp_open_holds") == 0
    assert metric_value(body, "creditapp_compensations", status="failed") == 0
    assert metric_value(body, "creditapp_webhook_oldest_undelivered_seconds") == 0
    assert metric_value(body, "creditapp_webhook_overdue_seconds") == 0
    assert metric_value(body, "creditapp_webhook_pending_deliveries") == 0

    monkeypatch.setitem(app.config, "METRICS_TOKEN", "s3cret-scrape-token")
    refused = client.get("/metrics")
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (401, "unauthorized")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert allowed.status_code == 200
    assert allowed.content_type.startswith("text/plain")


@pytest.mark.real_clock
def test_messages_and_credits_add_up_across_gunicorn_workers(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person: Person = person_factory(credits=100 * 1_000_000)
    add_price(app, "openai", "gpt-metrics", input="1", output="3")
    conversation = start_conversation(client, person, "openai", "gpt-metrics")
    fake_providers.script(
        "openai",
        *(Answer(usage={"prompt_tokens": 10 * n, "completion_tokens": n}) for n in range(1, 8)),
    )
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    body = json.dumps({"content": "Count me", "max_tokens": 50}).encode()
    with live_server(env, workers=3, threads=2) as base:
        statuses = [
            call(
                "POST",
                f"{base}/api/conversations/{conversation}/messages",
                person.token,
                body,
                {"Idempotency-Key": f"m-{n}"},
            )[0]
            for n in range(7)
        ]
        assert statuses == [201] * 7
        scraped = call("GET", f"{base}/metrics")[2].decode()
    labels = {"provider": "openai", "model": "gpt-metrics"}
    charged = scalar(app, select(func.sum(UsageRecord.credits_charged)))
    assert metric_value(scraped, "creditapp_messages_total", outcome="charged", **labels) == 7
    assert (
        metric_value(scraped, "creditapp_credits_charged_microcredits_total", **labels) == charged
    )
    assert metric_value(scraped, "creditapp_provider_request_duration_seconds_count", **labels) == 7
    route = "/api/conversations/<conversation_id>/messages"
    assert (
        metric_value(
            scraped, "creditapp_http_requests_total", method="POST", route=route, status="201"
        )
        == 7
    )
    assert (
        metric_value(scraped, "creditapp_ledger_operations_total", operation="settle", outcome="ok")
        == 7
    )


@pytest.mark.postgres_only
@pytest.mark.real_clock
def test_a_job_a_celery_worker_ran_shows_in_the_metrics(app: Flask, client: FlaskClient) -> None:
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    arguments = ("worker", "--concurrency", "1", "--loglevel", "WARNING", "--without-mingle")
    with celery_process(*arguments, "--without-gossip", env=env):
        app.extensions["celery"].send_task("creditapp.run_job", args=("expire-holds",))
        deadline = time.monotonic() + 60
        while True:
            body = client.get("/metrics").get_data(as_text=True)
            if metric_value(
                body, "creditapp_job_runs_total", job_name="expire-holds", outcome="success"
            ):
                break
            assert time.monotonic() < deadline, "the worker's run never showed"
            time.sleep(0.2)


def test_calls_for_models_not_priced_are_counted_under_one_name(
    client: FlaskClient, person_factory: Any
) -> None:
    """A caller names the model: each new name must not add a series to every worker."""
    _id, key = make_key(client, person_factory(credits=100 * 1_000_000))
    refused = {"provider": "openai", "model": UNPRICED, "outcome": "refused"}
    before = REGISTRY.get_sample_value("creditapp_messages_total", refused) or 0
    names = [f"openai/made-up-{secrets.token_hex(4)}" for _ in range(3)]
    for name in names:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 404, answer.get_json()
    assert REGISTRY.get_sample_value("creditapp_messages_total", refused) == before + 3
    exposed = client.get("/metrics").get_data(as_text=True)
    assert not any(name.split("/")[1] in exposed for name in names)


@pytest.mark.postgres_only
@pytest.mark.real_clock
def test_with_the_database_cut_the_scrape_still_has_the_requests_and_says_so(
    app: Flask, person_factory: Any
) -> None:
    """An outage's 503s are what the scrape must show: the process's own metrics answer
    without the database, with `creditapp_database_up 0` for the gauges that need it."""
    person = person_factory(credits=1_000_000)
    proxy = TcpProxy.in_front_of(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        with live_server({"DATABASE_URL": proxy.url}, threads=2) as base:
            assert call("GET", f"{base}/api/credit/balance", person.token)[0] == 200
            proxy.cut()
            assert call("GET", f"{base}/api/credit/balance", person.token)[0] == 503
            status, _headers, scraped = call("GET", f"{base}/metrics")
            proxy.restore()
            assert status == 200, scraped
            body = scraped.decode()
            assert metric_value(body, "creditapp_database_up") == 0
            assert "creditapp_open_holds" not in body
            answered = {
                status: metric_value(
                    body,
                    "creditapp_http_requests_total",
                    method="GET",
                    route="/api/credit/balance",
                    status=status,
                )
                for status in ("200", "503")
            }
            assert answered == {"200": 1, "503": 1}
            deadline = time.monotonic() + 20
            while (
                metric_value(call("GET", f"{base}/metrics")[2].decode(), "creditapp_database_up")
                != 1
            ):
                assert time.monotonic() < deadline, "the scrape never found the database again"
                time.sleep(0.25)
    finally:
        proxy.close()


def test_gunicorn_empties_the_metrics_directory_of_samples_only(tmp_path: Path) -> None:
    """A dead run's samples go (they would count again); anything else an operator keeps in
    the directory stays."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("an operator's")
    (shared / "counter_999999.db").write_bytes(b"a dead worker's samples")
    with live_server({"PROMETHEUS_MULTIPROC_DIR": str(shared)}, threads=1) as base:
        assert call("GET", f"{base}/healthz")[0] == 200
        assert (shared / "keep.txt").read_text() == "an operator's"
        assert not (shared / "counter_999999.db").exists()
