"""CSV exports of the caller's transactions and usage: the same rows as the JSON answers."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from creditapp import ledger
from creditapp.api import credit
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, send, start_conversation

CREDITS = 100 * 1_000_000


def rows_of(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.get_data()
    assert response.content_type == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def chatted(app: Flask, client: FlaskClient, person_factory: Any, fake: FakeProviders) -> Person:
    add_price(app, "openai", "gpt-csv", input="1", output="2")
    user = person_factory(credits=CREDITS)
    conversation = start_conversation(client, user, "openai", "gpt-csv")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}
    fake.script("openai", *(Answer(usage=usage) for _ in range(3)))
    for _ in range(3):
        assert send(client, user, conversation).status_code == 201
    return user


def test_transactions_as_csv_are_the_json_entries(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    user = chatted(app, client, person_factory, fake_providers)
    entries = client.get("/api/credit/transactions", headers=user.headers).get_json()["items"]
    expected = [
        {
            "id": entry["id"],
            "created_at": entry["created_at"],
            "type": entry["type"],
            "amount": entry["amount"],
            "balance_after": entry["balance_after"],
            "reference": entry["reference"] or "",
            "user_id": entry["user_id"] or "",
        }
        for entry in entries
    ]
    by_format = client.get("/api/credit/transactions?format=csv", headers=user.headers)
    assert by_format.headers["Content-Disposition"] == 'attachment; filename="transactions.csv"'
    assert rows_of(by_format) == expected
    by_accept = client.get(
        "/api/credit/transactions", headers={**user.headers, "Accept": "text/csv"}
    )
    assert rows_of(by_accept) == expected
    charges = rows_of(
        client.get("/api/credit/transactions?format=csv&type=charge", headers=user.headers)
    )
    assert [row["amount"] for row in charges] == ["-0.2"] * 3


def test_a_date_range_bounds_the_transactions(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    user = chatted(app, client, person_factory, fake_providers)
    entries = client.get("/api/credit/transactions", headers=user.headers).get_json()["items"]
    oldest, newest = entries[-1]["created_at"], entries[0]["created_at"]
    since_newest = client.get(
        f"/api/credit/transactions?from={newest}", headers=user.headers
    ).get_json()["items"]
    assert [entry["id"] for entry in since_newest] == [entries[0]["id"]]
    until_oldest = rows_of(
        client.get(f"/api/credit/transactions?format=csv&to={oldest}", headers=user.headers)
    )
    assert [row["id"] for row in until_oldest] == [entries[-1]["id"]]
    assert_error(
        client.get(f"/api/credit/transactions?from={newest}&to={oldest}", headers=user.headers),
        400,
        "validation_error",
    )


def test_grants_as_csv_are_the_json_grants(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """Contract, section 5: both list endpoints answer CSV, the grants too."""
    user = chatted(app, client, person_factory, fake_providers)
    with app.app_context():
        with write_transaction(db.session):
            ledger.grant(
                db.session,
                account_id=user.account_id,
                amount=2_000_000,
                source="promo",
                reason="=HYPERLINK(1)",  # an admin's words: text in a spreadsheet
                expires_at=utcnow() + timedelta(days=30),
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    listed = client.get("/api/credit/grants", headers=user.headers).get_json()["items"]
    assert len(listed) == 2
    expected = [
        {name: "" if grant[name] is None else str(grant[name]) for name in grant}
        for grant in listed
    ]
    expected[0]["reason"] = "'=HYPERLINK(1)"
    by_format = client.get("/api/credit/grants?format=csv", headers=user.headers)
    assert by_format.headers["Content-Disposition"] == 'attachment; filename="grants.csv"'
    assert rows_of(by_format) == expected
    by_accept = client.get("/api/credit/grants", headers={**user.headers, "Accept": "text/csv"})
    assert rows_of(by_accept) == expected


def test_usage_as_csv_is_the_json_report(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    user = chatted(app, client, person_factory, fake_providers)
    report = client.get("/api/credit/usage?group_by=model", headers=user.headers).get_json()
    rows = rows_of(client.get("/api/credit/usage?group_by=model&format=csv", headers=user.headers))
    assert rows == [
        {name: str(value) for name, value in group.items()} for group in report["groups"]
    ]
    assert rows[0]["key"] == "openai:gpt-csv" and rows[0]["credits"] == "0.6"


def test_other_formats_are_refused(client: FlaskClient, person_factory: Any) -> None:
    user = person_factory(credits=CREDITS)
    error = assert_error(
        client.get("/api/credit/transactions?format=xml", headers=user.headers),
        400,
        "validation_error",
    )
    assert "format" in error["details"]


@pytest.mark.parametrize("page", [1, 2, 3])
def test_transactions_as_csv_read_page_by_page_are_every_entry_once(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
    page: int,
) -> None:
    user = chatted(app, client, person_factory, fake_providers)
    whole = rows_of(client.get("/api/credit/transactions?format=csv", headers=user.headers))
    assert len(whole) > 3
    monkeypatch.setattr(credit, "CSV_PAGE", page)
    assert rows_of(client.get("/api/credit/transactions?format=csv", headers=user.headers)) == whole
    # The range's filter holds on every page.
    charges = rows_of(
        client.get("/api/credit/transactions?format=csv&type=charge", headers=user.headers)
    )
    assert [row["amount"] for row in charges] == ["-0.2"] * 3


@pytest.mark.postgres_only
def test_an_export_the_database_cannot_start_answers_503_not_a_cut_body(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """A table held by a migration's lock past the lock timeout: the export's first read fails
    before the answer starts, so it is the request's 503 in the API's shape."""
    user = chatted(app, client, person_factory, fake_providers)
    with app.app_context(), db.engine.connect() as locker:
        locker.execute(text("LOCK TABLE ledger_entries IN ACCESS EXCLUSIVE MODE"))
        refused = client.get(
            "/api/credit/transactions?format=csv",
            headers={**user.headers, "X-Request-ID": "csv-export-locked"},
        )
        locker.rollback()
    assert_error(refused, 503, "service_unavailable")
    assert refused.headers["X-Request-ID"] == "csv-export-locked"
    assert len(rows_of(client.get("/api/credit/transactions?format=csv", headers=user.headers))) > 3
