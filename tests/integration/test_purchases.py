"""Buying credits through Stripe Checkout, with the real `stripe` SDK against the fake Stripe:
granted exactly once whatever Stripe sends, never on a bad signature, taken back on refunds and
disputes without a negative balance, recovered by the sync job when a webhook is lost."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.jobs import purchases as sync_job
from creditapp.ledger.models import AuditRecord, Grant
from creditapp.purchases.models import Purchase, StripeEvent
from tests.conftest import Person, utcnow
from tests.fake_stripe import DISCONNECT, ERROR, FakeStripe, event_body
from tests.helpers import (
    assert_consistent,
    assert_error,
    buy,
    deliver,
    ledger_rows,
    metric_value,
    new_team,
    run_job_at,
    scalar,
    session_of,
    started,
)

CR = 1_000_000
WEBHOOK = "/api/webhooks/stripe"


def balance(client: FlaskClient, person: Person) -> str:
    answer: str = client.get("/api/credit/balance", headers=person.headers).get_json()["balance"]
    return answer


def purchase(client: FlaskClient, person: Person, purchase_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(
        f"/api/credit/purchases/{purchase_id}", headers=person.headers
    ).get_json()
    return found


def test_a_purchase_from_request_to_granted_credits(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    made = buy(client, person, "5000")
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert body["credits"] == "5000" and body["amount_cents"] == 500
    assert (body["currency"], body["status"]) == ("usd", "pending")
    session_id = session_of(client, person, body["id"])
    assert body["checkout_url"] == f"{fake_stripe.root}/checkout/{session_id}"
    created = [call for call in fake_stripe.calls() if call["path"] == "/v1/checkout/sessions"][-1]
    params = created["params"]
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == body["id"]
    assert params["metadata"] == {"purchase_id": body["id"]}
    [item] = params["line_items"]
    assert int(item["quantity"]) == 1  # (form-encoded: every value a string)
    assert item["price_data"]["currency"] == "usd"
    assert int(item["price_data"]["unit_amount"]) == 500
    base = app.config["PUBLIC_BASE_URL"]
    assert params["success_url"].startswith(f"{base}/purchases/{body['id']}")
    assert params["cancel_url"].startswith(f"{base}/purchases/{body['id']}")

    answer = deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    assert answer.status_code == 200
    assert answer.get_json() == {"received": True, "outcome": "granted"}
    assert balance(client, person) == "5000"
    bought = purchase(client, person, body["id"])
    assert (bought["status"], bought["shortfall"], bought["clawed_back"]) == ("paid", "0", "0")
    assert ledger_rows(app)[-1] == ("grant", 5000 * CR, 5000 * CR)
    assert scalar(app, select(Grant.source).where(Grant.account_id == person.account_id)) == (
        "purchase"
    )
    assert_consistent(app, [person.account_id])


def test_every_event_twice_both_kinds_and_ten_at_once_grant_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    completed = fake_stripe.pay(session_id, deliver=False)
    # The async event of the same session, as a late second word on the same payment.
    succeeded = {**completed, "id": "evt_" + secrets.token_hex(8)}
    succeeded["type"] = "checkout.session.async_payment_succeeded"

    def post(event: dict[str, Any]) -> int:
        with app.test_client() as own:
            return int(deliver(own, fake_stripe, event).status_code)

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(post, [completed] * 5 + [succeeded] * 5))
    assert statuses == [200] * 10
    assert deliver(client, fake_stripe, completed).get_json()["outcome"] == "duplicate"
    assert balance(client, person) == "5000"
    grants = select(func.count()).select_from(Grant).where(Grant.account_id == person.account_id)
    assert scalar(app, grants) == 1
    events = (
        select(func.count())
        .select_from(StripeEvent)
        .where(StripeEvent.purchase_id == int(purchase_id))
    )
    assert scalar(app, events) == 2  # each event id recorded once
    assert purchase(client, person, purchase_id)["status"] == "paid"


@pytest.mark.parametrize(
    "signing",
    [
        {"secret": "whsec_forged"},
        {"signature": ""},  # missing
        {"timestamp": 1},  # stale: far past the 300 s tolerance
        {"body": b'{"id": "evt_altered", "type": "checkout.session.completed"}'},
        {"signature": "t=abc,v1=zz"},  # garbage
        {"signature": "t=1,v1=\u00e9"},  # not ASCII: hmac cannot compare it
    ],
    ids=["forged", "missing", "stale", "altered", "garbage", "not-ascii"],
)
def test_a_bad_signature_is_refused_and_changes_nothing(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_stripe: FakeStripe,
    signing: dict[str, Any],
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    event = fake_stripe.pay(session_id, deliver=False)
    if "body" in signing:
        # Signed as the real event, sent with another body.
        signing = {"body": signing["body"], "signature": fake_stripe.sign(event_body(event))}
    refused = deliver(client, fake_stripe, event, **signing)
    assert_error(refused, 400, "invalid_signature")
    assert balance(client, person) == "0"
    assert purchase(client, person, purchase_id)["status"] == "pending"
    assert scalar(app, select(func.count()).select_from(StripeEvent)) is not None
    assert scalar(app, select(StripeEvent.id).where(StripeEvent.id == event["id"])) is None


def test_garbage_is_never_a_server_error(client: FlaskClient, fake_stripe: FakeStripe) -> None:
    for body in (b"not json", b"\x00", b'{"id": 5}', b"[]", b'{"data": []}', b"{" * 5000):
        answer = deliver(client, fake_stripe, {}, body=body)
        # Signed correctly but not an event: refused or ignored, never a 5xx.
        assert answer.status_code in (200, 400), (body, answer.get_json())
    not_utf8 = deliver(client, fake_stripe, {}, body=b"\xff\xfe", signature="t=1,v1=00")
    assert_error(not_utf8, 400, "invalid_signature")


def test_an_unpaid_completion_waits_for_its_asynchronous_payment(
    client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    completed = fake_stripe.pay(session_id, asynchronous=True, deliver=False)
    assert deliver(client, fake_stripe, completed).get_json()["outcome"] == "awaiting_payment"
    assert (balance(client, person), purchase(client, person, purchase_id)["status"]) == (
        "0",
        "pending",
    )
    succeeded = fake_stripe.settle_async(session_id, deliver=False)
    assert deliver(client, fake_stripe, succeeded).get_json()["outcome"] == "granted"
    assert balance(client, person) == "5000"


def test_a_failed_asynchronous_payment_and_an_expired_session_fail_the_purchase(
    client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    first, first_session = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(first_session, asynchronous=True, deliver=False))
    deliver(client, fake_stripe, fake_stripe.fail_async(first_session, deliver=False))
    second, second_session = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.expire(second_session, deliver=False))
    assert [purchase(client, person, found)["status"] for found in (first, second)] == [
        "failed",
        "failed",
    ]
    assert balance(client, person) == "0"


def test_an_amount_that_does_not_match_is_flagged_not_granted(
    client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    event = fake_stripe.pay(session_id, deliver=False)
    event["data"]["object"]["amount_total"] = 1
    assert deliver(client, fake_stripe, event).get_json()["outcome"] == "amount_mismatch"
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["problem"]) == ("pending", "amount_mismatch")
    assert balance(client, person) == "0"


def test_a_lost_webhook_is_recovered_by_the_job_once_even_run_twice_at_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    fake_stripe.pay(session_id, deliver=False)  # paid at Stripe; its webhook never arrives
    assert run_job_at(app, "sync-purchases", utcnow())["looked_up"] == 0  # too recent to ask
    later = utcnow() + timedelta(minutes=6)
    with ThreadPoolExecutor(max_workers=2) as pool:
        summaries = list(pool.map(lambda _: run_job_at(app, "sync-purchases", later), range(2)))
    # One run granted it; the other found it granted (or, later, no longer pending).
    assert sum(summary.get("granted", 0) for summary in summaries) == 1
    assert balance(client, person) == "5000"
    assert purchase(client, person, purchase_id)["status"] == "paid"
    assert_consistent(app, [person.account_id])


def test_a_lost_failure_of_a_delayed_payment_is_found_by_the_job(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """The session of a delayed payment that failed stays complete and unpaid at Stripe: its
    lost `async_payment_failed` left the purchase pending for good, asked about at every run.
    The job reads the payment intent with it; one still processing stays pending."""
    person = person_factory()
    failing, failing_session = started(client, fake_stripe, person)
    settling, settling_session = started(client, fake_stripe, person)
    declined, declined_session = started(client, fake_stripe, person)
    for session_id in (failing_session, settling_session):
        deliver(client, fake_stripe, fake_stripe.pay(session_id, asynchronous=True, deliver=False))
    fake_stripe.fail_async(failing_session, deliver=False)  # its webhook never arrives
    # A card declined on a checkout still open: the buyer may pay with another.
    fake_stripe.decline(declined_session)
    summary = run_job_at(app, "sync-purchases", utcnow() + timedelta(minutes=6))
    assert (summary.get("failed"), summary.get("still_pending")) == (1, 2)
    assert [
        purchase(client, person, found)["status"] for found in (failing, settling, declined)
    ] == ["failed", "pending", "pending"]
    deliver(client, fake_stripe, fake_stripe.pay(declined_session, deliver=False))
    assert purchase(client, person, declined)["status"] == "paid"
    retrieved = [call["params"] for call in fake_stripe.calls() if call["method"] == "GET"]
    assert retrieved and all(asked == {"expand": ["payment_intent"]} for asked in retrieved)
    assert balance(client, person) == "5000"  # the one paid with another card


def test_the_alerts_gauge_is_the_longest_a_pending_purchase_had_no_word_from_stripe(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """An abandoned checkout stays pending, open at Stripe, for a day: measured by its age, the
    pending-purchase alert fired for every one. Once the sync job has Stripe's answer, it is
    known; a flagged purchase is counted apart, for an admin."""
    person = person_factory()
    open_one, _session = started(client, fake_stripe, person)
    flagged, _other = started(client, fake_stripe, person)
    with app.app_context():
        with write_transaction(db.session):
            db.session.execute(update(Purchase).values(created_at=utcnow() - timedelta(hours=2)))
            db.session.execute(
                update(Purchase)
                .where(Purchase.id == int(flagged))
                .values(problem="amount_mismatch")
            )
        db.session.remove()

    def gauges() -> tuple[float, float]:
        body = client.get("/metrics").get_data(as_text=True)
        return (
            metric_value(body, "creditapp_pending_purchase_unanswered_seconds"),
            metric_value(body, "creditapp_purchases_flagged"),
        )

    unanswered, flagged_count = gauges()
    assert 2 * 3600 - 60 < unanswered < 2 * 3600 + 600 and flagged_count == 1
    assert run_job_at(app, "sync-purchases", utcnow())["still_pending"] == 1
    unanswered, flagged_count = gauges()
    assert unanswered < 600 and flagged_count == 1
    assert purchase(client, person, open_one)["status"] == "pending"


def test_the_job_looks_past_purchases_still_open_and_leaves_a_flagged_one_to_an_admin(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buyers who never pay keep their purchases pending for a day: they must not keep the
    job from a paid purchase after them. One a batch, to need several."""
    monkeypatch.setattr(sync_job, "BATCH", 1)
    person = person_factory()
    flagged_id, flagged_session = started(client, fake_stripe, person)
    mismatched = fake_stripe.pay(flagged_session, deliver=False)
    mismatched["data"]["object"]["amount_total"] = 1
    assert deliver(client, fake_stripe, mismatched).get_json()["outcome"] == "amount_mismatch"
    for _ in range(2):
        started(client, fake_stripe, person)  # open at Stripe: never paid
    paid_id, paid_session = started(client, fake_stripe, person)
    fake_stripe.pay(paid_session, deliver=False)  # its webhook never arrives

    summary = run_job_at(app, "sync-purchases", utcnow() + timedelta(minutes=6))
    assert summary == {"looked_up": 3, "still_pending": 2, "granted": 1}
    assert purchase(client, person, paid_id)["status"] == "paid"
    assert purchase(client, person, flagged_id)["problem"] == "amount_mismatch"
    flagged_audits = select(func.count()).where(AuditRecord.action == "purchase_amount_mismatch")
    assert scalar(app, flagged_audits) == 1


def test_a_session_stripe_does_not_know_is_flagged_and_the_job_looks_past_it(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """Stripe's 404 for one session (its secret key now another account's, say) is that
    purchase's, not Stripe being down: the job goes on to a paid purchase after it, whose
    webhook was lost. Asked about again while the session could still be paid, it is flagged
    for an admin once it could not, and the job asks nothing more of it."""
    person = person_factory()
    unknown_id, _session = started(client, fake_stripe, person)
    with app.app_context():
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == int(unknown_id))
            .values(checkout_session_id="cs_test_" + secrets.token_hex(8))
        )
        db.session.commit()
        db.session.remove()
    paid_id, paid_session = started(client, fake_stripe, person)
    fake_stripe.pay(paid_session, deliver=False)

    summary = run_job_at(app, "sync-purchases", utcnow() + timedelta(minutes=6))
    assert summary == {"looked_up": 2, "stripe_refused": 1, "granted": 1}
    assert purchase(client, person, paid_id)["status"] == "paid"
    assert purchase(client, person, unknown_id)["problem"] is None
    later = utcnow() + timedelta(hours=25, minutes=1)
    assert run_job_at(app, "sync-purchases", later) == {"looked_up": 1, "session_unknown": 1}
    flagged = purchase(client, person, unknown_id)
    assert (flagged["status"], flagged["problem"]) == ("pending", "session_unknown")
    with app.app_context():
        (details,) = db.session.scalars(
            select(AuditRecord.details).where(AuditRecord.action == "purchase_session_unknown")
        ).all()
        db.session.remove()
    assert (details["purchase_id"], details["stripe"]) == (unknown_id, "resource_missing")
    assert run_job_at(app, "sync-purchases", later) == {"looked_up": 0}
    assert balance(client, person) == "5000"
    assert_consistent(app, [person.account_id])


def test_partial_then_full_refund_takes_the_credits_back(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    partial = fake_stripe.refund(session_id, 200, deliver=False)  # $2 of $5
    assert deliver(client, fake_stripe, partial).get_json()["outcome"] == "clawed_back"
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], balance(client, person)) == (
        "partially_refunded",
        "2000",
        "3000",
    )
    whole = fake_stripe.refund(session_id, deliver=False)
    deliver(client, fake_stripe, whole)
    deliver(client, fake_stripe, partial)  # a late, older event: nothing more
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], found["shortfall"]) == ("refunded", "5000", "0")
    assert balance(client, person) == "0"
    assert_consistent(app, [person.account_id])


def test_a_refund_takes_back_the_purchases_own_credits_not_the_soonest_to_expire(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe, admin: Person
) -> None:
    """Credits are drawn soonest expiry first, and bought ones never expire: a refund drawn in
    that order took the expiring credits and left bought ones, lasting, in their place."""
    person = person_factory()
    granted = client.post(
        "/api/admin/credit/grant",
        json={
            "user_id": str(person.id),
            "amount": "1000",
            "reason": "a promotion",
            "expires_at": (utcnow() + timedelta(days=1)).isoformat(),
        },
        headers=admin.headers,
    )
    assert granted.status_code == 201, granted.get_json()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    deliver(client, fake_stripe, fake_stripe.refund(session_id, deliver=False))
    assert purchase(client, person, purchase_id)["clawed_back"] == "5000"
    with app.app_context():
        remaining = db.session.execute(
            select(Grant.source, Grant.remaining).where(Grant.account_id == person.account_id)
        ).all()
        db.session.remove()
    assert sorted(remaining) == [("admin", CR * 1000), ("purchase", 0)]
    run_job_at(app, "expire-grants", utcnow() + timedelta(days=2))
    assert balance(client, person) == "0"
    assert_consistent(app, [person.account_id])


def test_a_refund_after_the_credits_were_spent_records_the_shortfall(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe, admin: Person
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    spent = client.post(
        "/api/admin/credit/adjust",
        json={"user_id": str(person.id), "amount": "-4000", "reason": "spent"},
        headers=admin.headers,
    )
    assert spent.status_code == 200, spent.get_json()
    deliver(client, fake_stripe, fake_stripe.refund(session_id, deliver=False))
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], found["shortfall"]) == (
        "refunded",
        "1000",
        "4000",
    )
    assert balance(client, person) == "0"
    assert_consistent(app, [person.account_id])
    # Reconciliation names it; the admin console's view of the user's purchases says it too.
    run_job_at(app, "reconcile", utcnow())
    report = client.get("/api/admin/credit/reconciliation", headers=admin.headers).get_json()
    assert report["drift"] == []
    assert report["shortfalls"] == [
        {
            "purchase_id": purchase_id,
            "user_id": str(person.id),
            "status": "refunded",
            "shortfall": "4000",
        }
    ]
    path = f"/api/admin/users/{person.id}/purchases"
    [listed] = client.get(path, headers=admin.headers).get_json()["items"]
    assert (listed["id"], listed["status"], listed["shortfall"]) == (
        purchase_id,
        "refunded",
        "4000",
    )
    assert_error(client.get(path, headers=person.headers), 403, "forbidden")


def test_a_dispute_takes_back_the_whole_purchase(
    client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    deliver(client, fake_stripe, fake_stripe.dispute(session_id, deliver=False))
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], found["shortfall"]) == ("disputed", "5000", "0")
    assert balance(client, person) == "0"


@pytest.mark.parametrize("closed_as", ["won", "warning_closed"])
def test_a_dispute_won_gives_back_what_it_took_and_forgives_the_shortfall(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_stripe: FakeStripe,
    admin: Person,
    closed_as: str,
) -> None:
    """The merchant kept the money: the credits the dispute took are the buyer's again, and
    what it could not take (spent already) is no longer owed; a partial refund still counts.
    A won dispute was ignored: paid for, and taken back for good."""
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    deliver(client, fake_stripe, fake_stripe.refund(session_id, 100, deliver=False))  # $1
    spent = client.post(
        "/api/admin/credit/adjust",
        json={"user_id": str(person.id), "amount": "-1500", "reason": "spent"},
        headers=admin.headers,
    )
    assert spent.status_code == 200, spent.get_json()
    deliver(client, fake_stripe, fake_stripe.dispute(session_id, deliver=False))
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], found["shortfall"]) == (
        "disputed",
        "3500",
        "1500",
    )
    closed = deliver(
        client, fake_stripe, fake_stripe.close_dispute(session_id, closed_as, deliver=False)
    )
    assert closed.get_json()["outcome"] == "dispute_won"
    found = purchase(client, person, purchase_id)
    # $1 of $5 refunded: 1000 credits owed back, taken with the refund; the rest returns.
    assert (found["status"], found["clawed_back"], found["shortfall"]) == (
        "partially_refunded",
        "1000",
        "0",
    )
    assert balance(client, person) == "2500"  # 5000 - 1000 refunded - 1500 spent
    assert_consistent(app, [person.account_id])


def test_a_dispute_won_that_took_nothing_forgives_its_shortfall(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe, admin: Person
) -> None:
    """A partial refund taken back, the rest spent, then a dispute that could take nothing:
    won, there is only its shortfall to forgive (a grant of nothing was refused, and every
    retry of Stripe's event with it)."""
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    deliver(client, fake_stripe, fake_stripe.refund(session_id, 100, deliver=False))
    spent = client.post(
        "/api/admin/credit/adjust",
        json={"user_id": str(person.id), "amount": "-4000", "reason": "spent"},
        headers=admin.headers,
    )
    assert spent.status_code == 200, spent.get_json()
    deliver(client, fake_stripe, fake_stripe.dispute(session_id, deliver=False))
    closed = deliver(client, fake_stripe, fake_stripe.close_dispute(session_id, deliver=False))
    assert closed.status_code == 200, closed.get_json()
    found = purchase(client, person, purchase_id)
    assert (found["status"], found["clawed_back"], found["shortfall"]) == (
        "partially_refunded",
        "1000",
        "0",
    )
    assert balance(client, person) == "0"
    assert_consistent(app, [person.account_id])


def test_a_dispute_won_gives_back_what_it_took_with_the_expiry_it_had(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe, admin: Person
) -> None:
    """A dispute takes the purchase's own credits first, then others (here a week's promotion,
    the purchase's being spent): won, what it took from the promotion comes back expiring with
    it, not as lasting bought credits."""
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    for body in (
        {"amount": "-4000", "reason": "spent"},
        {
            "amount": "4000",
            "reason": "a promotion",
            "expires_at": (utcnow() + timedelta(days=7)).isoformat(),
        },
    ):
        path = (
            "/api/admin/credit/adjust"
            if body["amount"].startswith("-")
            else "/api/admin/credit/grant"
        )
        done = client.post(path, json={"user_id": str(person.id), **body}, headers=admin.headers)
        assert done.status_code in (200, 201), done.get_json()
    deliver(client, fake_stripe, fake_stripe.dispute(session_id, deliver=False))
    assert balance(client, person) == "0"
    deliver(client, fake_stripe, fake_stripe.close_dispute(session_id, deliver=False))
    assert balance(client, person) == "5000"
    run_job_at(app, "expire-grants", utcnow() + timedelta(days=8))
    assert balance(client, person) == "1000"
    assert purchase(client, person, purchase_id)["status"] == "paid"
    assert_consistent(app, [person.account_id])


def test_a_dispute_won_before_it_was_opened_takes_nothing_and_a_lost_one_stays(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """Stripe does not keep its events in order: the won dispute's event first, then its
    opening, takes nothing. A dispute lost changes nothing more."""
    person = person_factory()
    won_purchase, won_session = started(client, fake_stripe, person)
    lost_purchase, lost_session = started(client, fake_stripe, person)
    for session_id in (won_session, lost_session):
        deliver(client, fake_stripe, fake_stripe.pay(session_id, deliver=False))
    opened = fake_stripe.dispute(won_session, deliver=False)
    deliver(client, fake_stripe, fake_stripe.close_dispute(won_session, deliver=False))
    deliver(client, fake_stripe, opened)
    deliver(client, fake_stripe, fake_stripe.dispute(lost_session, deliver=False))
    lost = deliver(
        client, fake_stripe, fake_stripe.close_dispute(lost_session, "lost", deliver=False)
    )
    assert lost.get_json()["outcome"] == "clawed_back"
    standing = [
        (found["status"], found["clawed_back"])
        for found in (
            purchase(client, person, won_purchase),
            purchase(client, person, lost_purchase),
        )
    ]
    assert standing == [("paid", "0"), ("disputed", "5000")]
    assert balance(client, person) == "5000"
    assert_consistent(app, [person.account_id])


@pytest.mark.parametrize(
    ("word", "status", "left"),
    [
        ("partial refund", "partially_refunded", "3000"),
        ("refund", "refunded", "0"),
        ("dispute", "disputed", "0"),
    ],
)
@pytest.mark.parametrize("linked_by", ["webhook", "sync job"])
def test_a_refund_or_dispute_before_the_payments_own_event_takes_back_once_it_comes(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_stripe: FakeStripe,
    word: str,
    status: str,
    left: str,
    linked_by: str,
) -> None:
    """Stripe does not keep its events in order: a charge's refund or dispute may come before
    the payment's event (late, or lost and left to the sync job) names the charge's intent."""
    person = person_factory()
    purchase_id, session_id = started(client, fake_stripe, person)
    completed = fake_stripe.pay(session_id, deliver=False)
    early = {
        "partial refund": lambda: fake_stripe.refund(session_id, 200, deliver=False),
        "refund": lambda: fake_stripe.refund(session_id, deliver=False),
        "dispute": lambda: fake_stripe.dispute(session_id, deliver=False),
    }[word]()
    assert deliver(client, fake_stripe, early).get_json()["outcome"] == "unknown_purchase"
    if linked_by == "webhook":
        assert deliver(client, fake_stripe, completed).get_json()["outcome"] == "granted"
    else:
        later = utcnow() + timedelta(minutes=6)
        assert run_job_at(app, "sync-purchases", later)["granted"] == 1
    found = purchase(client, person, purchase_id)
    clawed_back = str(5000 - int(left))
    assert (found["status"], found["clawed_back"], found["shortfall"]) == (status, clawed_back, "0")
    assert balance(client, person) == left
    assert deliver(client, fake_stripe, early).get_json()["outcome"] == "duplicate"
    assert deliver(client, fake_stripe, completed).get_json()["outcome"] in (
        "duplicate",
        "already_granted",
    )
    assert balance(client, person) == left
    assert_consistent(app, [person.account_id])


def test_a_refund_and_the_payments_event_at_once_take_back_every_time(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """Whichever of the two commits first, the second sees it (PostgreSQL: the intent's row)."""
    person = person_factory()
    pairs = []
    for _ in range(6):
        _purchase_id, session_id = started(client, fake_stripe, person)
        completed = fake_stripe.pay(session_id, deliver=False)
        pairs.append((completed, fake_stripe.refund(session_id, deliver=False)))

    def post(event: dict[str, Any]) -> int:
        with app.test_client() as own:
            return int(deliver(own, fake_stripe, event).status_code)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for index, pair in enumerate(pairs):
            ordered = pair if index % 2 else pair[::-1]
            assert list(pool.map(post, ordered)) == [200, 200]
    listed = client.get("/api/credit/purchases", headers=person.headers).get_json()["items"]
    assert [item["status"] for item in listed] == ["refunded"] * 6
    assert balance(client, person) == "0"
    assert_consistent(app, [person.account_id])


@pytest.mark.parametrize("failure", [ERROR, DISCONNECT])
def test_stripe_unreachable_is_503_and_nothing_is_stored(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe, failure: str
) -> None:
    person = person_factory()
    fake_stripe.failure = failure
    try:
        refused = buy(client, person)
    finally:
        fake_stripe.failure = None
    assert_error(refused, 503, "payment_provider_unavailable")
    stored = select(func.count()).select_from(Purchase).where(Purchase.user_id == person.id)
    assert scalar(app, stored) == 0


def test_the_job_stops_at_the_first_purchase_stripe_does_not_answer_for(
    app: Flask, client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    """Stripe down: one lookup, not one timeout per pending purchase; the next run asks."""
    person = person_factory()
    for _ in range(3):
        started(client, fake_stripe, person)
    later = utcnow() + timedelta(minutes=6)
    asked_before = len(fake_stripe.calls())
    fake_stripe.failure = ERROR
    try:
        summary = run_job_at(app, "sync-purchases", later)
    finally:
        fake_stripe.failure = None
    assert summary == {"looked_up": 1, "stripe_unavailable": 1}
    assert len(fake_stripe.calls()) - asked_before == 2  # one lookup, and the SDK's one retry
    assert run_job_at(app, "sync-purchases", later) == {"looked_up": 3, "still_pending": 3}


@pytest.mark.parametrize(
    "credits", ["4990", "1000010", "5005", "5000.5", 0, -5000, True, "5e3", 5000.0]
)
def test_an_amount_that_cannot_be_bought_is_refused(
    client: FlaskClient, person_factory: Any, credits: Any
) -> None:
    assert_error(buy(client, person_factory(), credits), 400, "validation_error")


def test_another_users_purchase_does_not_exist_for_them(
    client: FlaskClient, person_factory: Any, fake_stripe: FakeStripe
) -> None:
    buyer, other = person_factory(), person_factory()
    purchase_id, _session = started(client, fake_stripe, buyer)
    assert purchase(client, buyer, purchase_id)["id"] == purchase_id
    path = f"/api/credit/purchases/{purchase_id}"
    assert_error(client.get(path, headers=other.headers), 404, "not_found")
    assert client.get("/api/credit/purchases", headers=other.headers).get_json()["items"] == []


def test_a_plain_member_sees_their_own_purchases_for_the_team_and_managers_see_all(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    owner, member = person_factory(), person_factory()
    with app.app_context():
        team_id, _account = new_team(owner.id, member.id)
        db.session.remove()
    owners = buy(client, owner, team_id=str(team_id)).get_json()["id"]
    members = buy(client, member, team_id=str(team_id)).get_json()["id"]

    def listed(person: Person) -> list[str]:
        page = client.get(f"/api/credit/purchases?team_id={team_id}", headers=person.headers)
        return [item["id"] for item in page.get_json()["items"]]

    assert listed(owner) == [members, owners]
    assert listed(member) == [members]
    read = f"/api/credit/purchases/{owners}?team_id={team_id}"
    assert client.get(read, headers=owner.headers).status_code == 200
    assert_error(client.get(read, headers=member.headers), 404, "not_found")
    own = f"/api/credit/purchases/{members}?team_id={team_id}"
    assert client.get(own, headers=member.headers).status_code == 200
    stranger = person_factory()
    assert_error(
        client.get(f"/api/credit/purchases?team_id={team_id}", headers=stranger.headers),
        404,
        "not_found",
    )
