"""The reconciliation job's stored report, and that running it changes nothing."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from creditapp.ledger.models import LedgerEntry
from tests.conftest import BACKEND, Person, utcnow
from tests.helpers import (
    run_job_at,
    run_job_at_once,
    scalar,
)

CREDIT = 1_000_000


def test_reconciliation_reports_and_changes_nothing(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    # Before the first run: an empty report that says it never ran.
    assert client.get("/api/admin/credit/reconciliation", headers=admin.headers).get_json() == {
        "ran_at": None,
        "checked_accounts": 0,
        "drift": [],
        "unbilled_calls": 0,
        "unbilled_cost": "0",
        "shortfalls": [],
    }
    person = person_factory(credits=5 * CREDIT)
    entries_before = scalar(app, select(func.count()).select_from(LedgerEntry))
    ran_at = utcnow()
    runs = (
        run_job_at_once(app, "reconcile", ran_at, 2)
        if BACKEND == "postgresql"
        else [run_job_at(app, "reconcile", ran_at)]
    )
    assert all(
        result == {"checked_accounts": 2, "drift": 0, "unbilled_calls": 0, "shortfalls": 0}
        for result in runs
    )
    report = client.get("/api/admin/credit/reconciliation", headers=admin.headers).get_json()
    assert report == {
        "ran_at": ran_at.isoformat().replace("+00:00", "Z"),
        "checked_accounts": 2,
        "drift": [],
        "unbilled_calls": 0,
        "unbilled_cost": "0",
        "shortfalls": [],
    }
    assert scalar(app, select(func.count()).select_from(LedgerEntry)) == entries_before
    assert client.get("/api/credit/balance", headers=person.headers).get_json()["balance"] == "5"
