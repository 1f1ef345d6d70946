"""A settle that comes after the expiry job released its hold still charges the call: a late
answer is never free (contract section 2)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from creditapp import ledger
from creditapp.billing.models import UsageRecord
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord, Hold
from creditapp.metering.providers import Connection, Providers
from tests.conftest import TEST_CONTEXT, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, send, start_conversation

CREDIT = 1_000_000
# 1 USD per 1M tokens in and out: 1,000 µcr a token. 100 + 50 tokens cost 0.15 credits.
USAGE = {"prompt_tokens": 100, "completion_tokens": 50}
COST = 150 * 1_000


@pytest.fixture
def patient_providers(app: Flask, fake_providers: FakeProviders, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SDK clients that wait long enough for a provider the test holds back."""
    connections = {
        name: Connection(base_url=url, api_key="test", timeout_seconds=30, max_retries=0)
        for name, url in (("openai", fake_providers.base_urls()["OPENAI_BASE_URL"]),)
    }
    monkeypatch.setitem(app.extensions, "providers", Providers(connections))


def _send_while_the_expiry_job_runs(
    app: Flask, fake_providers: FakeProviders, person: Any, conversation: str, meanwhile: Any
) -> Any:
    """Send a message; once the provider has it (and the hold is placed), run
    `flask jobs run expire-holds --now <an hour later>` and `meanwhile`, then let it answer."""
    gate = threading.Event()
    fake_providers.script("openai", Answer(text="Late but here.", usage=USAGE, gate=gate))
    client = app.test_client()
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(send, client, person, conversation, max_tokens=50)
        deadline = time.monotonic() + 20
        while not fake_providers.calls("openai"):
            assert time.monotonic() < deadline, "the provider was never called"
            time.sleep(0.02)
        later = (utcnow() + timedelta(hours=1)).isoformat()
        expired = app.test_cli_runner().invoke(args=["jobs", "run", "expire-holds", "--now", later])
        assert expired.exit_code == 0, expired.output
        assert json.loads(expired.stdout)["expired"] == 1
        meanwhile()
        gate.set()
        return sending.result(timeout=30)


def _hold_and_audit(app: Flask) -> tuple[Hold, list[tuple[str, dict[str, Any]]]]:
    with app.app_context():
        hold = db.session.scalars(select(Hold)).one()
        actions = [
            (record.action, record.details)
            for record in db.session.scalars(
                select(AuditRecord)
                .where(AuditRecord.account_id == hold.account_id)
                .order_by(AuditRecord.id)
            )
        ]
        db.session.expunge_all()
        db.session.remove()
    return hold, actions


@pytest.mark.usefixtures("patient_providers")
def test_a_reply_after_its_hold_expired_is_charged_its_cost(
    app: Flask, fake_providers: FakeProviders, person_factory: Any
) -> None:
    person = person_factory(credits=10 * CREDIT)
    add_price(app, "openai", "gpt-late", input="1", output="1")
    conversation = start_conversation(app.test_client(), person, "openai", "gpt-late")

    response = _send_while_the_expiry_job_runs(
        app, fake_providers, person, conversation, meanwhile=lambda: None
    )

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["credits_charged"] == "0.15"
    assert body["balance"] == {"balance": "9.85", "reserved": "0", "available": "9.85"}
    hold, actions = _hold_and_audit(app)
    assert (hold.status, hold.captured, hold.uncollected) == ("settled", COST, 0)
    assert [action for action, _details in actions][-3:] == ["hold", "expire_hold", "settle"]
    assert actions[-1][1]["late"] is True
    with app.app_context():
        record = db.session.scalars(select(UsageRecord)).one()
        assert (record.cost, record.credits_charged) == (COST, COST)
        assert ledger.reconcile(db.session) == []
        db.session.remove()


@pytest.mark.usefixtures("patient_providers")
def test_a_late_reply_to_an_emptied_account_takes_what_is_there(
    app: Flask, fake_providers: FakeProviders, person_factory: Any
) -> None:
    person = person_factory(credits=CREDIT)
    add_price(app, "openai", "gpt-late", input="1", output="1")
    conversation = start_conversation(app.test_client(), person, "openai", "gpt-late")

    def spend_all_but_a_little() -> None:
        with app.app_context():
            with write_transaction(db.session):
                ledger.adjust(
                    db.session,
                    account_id=person.account_id,
                    amount=-(CREDIT - 40_000),
                    reason="emptied meanwhile",
                    context=TEST_CONTEXT,
                    now=utcnow(),
                )
            db.session.remove()

    response = _send_while_the_expiry_job_runs(
        app, fake_providers, person, conversation, meanwhile=spend_all_but_a_little
    )

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["credits_charged"] == "0.04"
    assert body["balance"] == {"balance": "0", "reserved": "0", "available": "0"}
    hold, _actions = _hold_and_audit(app)
    assert (hold.status, hold.captured, hold.uncollected) == ("settled", 40_000, COST - 40_000)
    with app.app_context():
        record = db.session.scalars(select(UsageRecord)).one()
        assert (record.cost, record.credits_charged) == (COST, 40_000)
        assert ledger.reconcile(db.session) == []
        db.session.remove()
