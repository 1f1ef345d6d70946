"""The fake Stripe answers the official `stripe` SDK as Stripe does, and its webhooks pass
`stripe.Webhook.construct_event`: the twin the purchase tests run against."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import stripe

from tests.fake_stripe import DISCONNECT, ERROR, FakeStripe, event_body

SUCCESS_URL = "http://127.0.0.1:5000/purchases/p-42/done?session={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://127.0.0.1:5000/purchases/p-42/cancelled"
# A purchase of 10,000 credits, as the service asks for it: 1,000 cents.
PURCHASE = {
    "mode": "payment",
    "line_items": [
        {
            "price_data": {
                "currency": "usd",
                "unit_amount": 1000,
                "product_data": {"name": "10,000 creditapp credits"},
            },
            "quantity": 1,
        }
    ],
    "client_reference_id": "p-42",
    "metadata": {"purchase_id": "p-42"},
    "success_url": SUCCESS_URL,
    "cancel_url": CANCEL_URL,
}


@dataclass
class Received:
    body: bytes
    signature: str | None


class Receiver:
    """The service's webhook endpoint, reduced to recording what it is sent."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(Received(body, self.headers.get("Stripe-Signature")))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/webhooks/stripe"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    yield fake
    fake.close()


@pytest.fixture
def receiver(fake_stripe: FakeStripe) -> Iterator[Receiver]:
    receiver = Receiver()
    fake_stripe.webhook_url = receiver.url
    yield receiver
    receiver.close()
    fake_stripe.reset()


@pytest.fixture
def client(fake_stripe: FakeStripe, receiver: Receiver) -> stripe.StripeClient:
    return stripe.StripeClient(
        fake_stripe.api_key, base_addresses={"api": fake_stripe.root}, max_network_retries=0
    )


def _purchase(client: stripe.StripeClient, idempotency_key: str = "purchase-p-42") -> Any:
    return client.v1.checkout.sessions.create(
        params=PURCHASE,  # type: ignore[arg-type]
        options={"idempotency_key": idempotency_key},
    )


def _verified(received: Received, secret: str) -> stripe.Event:
    return stripe.Webhook.construct_event(received.body, received.signature, secret, tolerance=300)


def test_the_sdk_creates_a_checkout_session_from_stripes_wire_format(
    fake_stripe: FakeStripe, client: stripe.StripeClient
) -> None:
    session = _purchase(client)
    assert session.object == "checkout.session"
    assert session.id.startswith("cs_test_")
    assert session.url == f"{fake_stripe.root}/checkout/{session.id}"
    assert (session.amount_total, session.currency, session.mode) == (1000, "usd", "payment")
    assert (session.payment_status, session.status, session.payment_intent) == (
        "unpaid",
        "open",
        None,
    )
    assert session.client_reference_id == "p-42"
    assert session.metadata.to_dict() == {"purchase_id": "p-42"}
    assert (session.success_url, session.cancel_url) == (SUCCESS_URL, CANCEL_URL)
    assert session.expires_at == session.created + 24 * 3600
    [call] = fake_stripe.calls()
    assert (call["method"], call["path"]) == ("POST", "/v1/checkout/sessions")
    assert "line_items[0][price_data][unit_amount]=1000" in call["form"]
    assert "metadata[purchase_id]=p-42" in call["form"]
    assert call["params"]["line_items"] == [
        {
            "price_data": {
                "currency": "usd",
                "unit_amount": "1000",
                "product_data": {"name": "10,000 creditapp credits"},
            },
            "quantity": "1",
        }
    ]
    assert call["headers"]["Authorization"] == f"Bearer {fake_stripe.api_key}"
    assert call["headers"]["Idempotency-Key"] == "purchase-p-42"
    assert call["headers"]["Stripe-Version"] == stripe.api_version


def test_a_session_is_retrieved_as_it_is_now(
    fake_stripe: FakeStripe, client: stripe.StripeClient
) -> None:
    session = _purchase(client)
    assert client.v1.checkout.sessions.retrieve(session.id).to_dict() == session.to_dict()
    fake_stripe.pay(session.id)
    paid = client.v1.checkout.sessions.retrieve(session.id)
    assert (paid.payment_status, paid.status, paid.url) == ("paid", "complete", None)
    assert isinstance(paid.payment_intent, str) and paid.payment_intent.startswith("pi_")
    assert paid.to_dict() == fake_stripe.session(session.id)


def test_an_unknown_session_is_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.retrieve("cs_test_nothing")
    assert (raised.value.http_status, raised.value.code) == (404, "resource_missing")
    assert raised.value.user_message == "No such checkout.session: 'cs_test_nothing'"


def test_the_same_idempotency_key_answers_the_same_session(
    fake_stripe: FakeStripe, client: stripe.StripeClient
) -> None:
    first = _purchase(client, "key-1")
    fake_stripe.pay(first.id)
    # A replay answers the session as it was created, as Stripe replays its saved answer.
    replayed = _purchase(client, "key-1")
    assert replayed.to_dict() == first.to_dict()
    assert _purchase(client, "key-2").id != first.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(
            params={**PURCHASE, "client_reference_id": "p-43"},  # type: ignore[arg-type]
            options={"idempotency_key": "key-1"},
        )


def test_concurrent_requests_with_one_idempotency_key_make_one_session(
    client: stripe.StripeClient,
) -> None:
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(_purchase(client, "same").id)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1


def test_a_wrong_or_missing_api_key_is_refused_with_401(
    fake_stripe: FakeStripe, client: stripe.StripeClient
) -> None:
    session = _purchase(client)
    stranger = stripe.StripeClient(
        "sk_test_wrongkey1234", base_addresses={"api": fake_stripe.root}, max_network_retries=0
    )
    with pytest.raises(stripe.AuthenticationError) as raised:
        stranger.v1.checkout.sessions.retrieve(session.id)
    assert raised.value.http_status == 401
    assert raised.value.user_message == "Invalid API Key provided: sk_test_********1234"
    answer = requests.get(f"{fake_stripe.root}/v1/checkout/sessions/{session.id}", timeout=5)
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_parameters_stripe_would_refuse_are_refused(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.checkout.sessions.create(params={**PURCHASE, "amount": 1000})  # type: ignore[arg-type]
    assert (unknown.value.code, unknown.value.param) == ("parameter_unknown", "amount")
    without_quantity = [{"price_data": PURCHASE["line_items"][0]["price_data"]}]  # type: ignore[index]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.create(
            params={**PURCHASE, "line_items": without_quantity}  # type: ignore[arg-type]
        )
    assert (missing.value.code, missing.value.param) == (
        "parameter_missing",
        "line_items[0][quantity]",
    )


@pytest.mark.parametrize(
    ("failure", "error"), [(ERROR, stripe.APIError), (DISCONNECT, stripe.APIConnectionError)]
)
def test_the_failure_switch_makes_stripe_fail(
    fake_stripe: FakeStripe,
    client: stripe.StripeClient,
    failure: str,
    error: type[stripe.StripeError],
) -> None:
    fake_stripe.failure = failure
    with pytest.raises(error):
        _purchase(client)
    fake_stripe.failure = None
    assert _purchase(client).status == "open"


def test_a_delay_makes_stripe_time_out(fake_stripe: FakeStripe) -> None:
    impatient = stripe.StripeClient(
        fake_stripe.api_key,
        base_addresses={"api": fake_stripe.root},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=0.2),
    )
    fake_stripe.delay = 0.5
    with pytest.raises(stripe.APIConnectionError):
        impatient.v1.checkout.sessions.create(params=PURCHASE)  # type: ignore[arg-type]


def test_paying_sends_a_signed_completed_event_construct_event_accepts(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = _purchase(client)
    sent = fake_stripe.pay(session.id)
    [received] = receiver.received
    assert received.body == event_body(sent)
    event = _verified(received, fake_stripe.webhook_secret)
    assert (event.id, event.type) == (sent["id"], "checkout.session.completed")
    assert event.id.startswith("evt_") and event.api_version == stripe.api_version
    assert event.livemode is False
    paid = event.data.object
    assert (paid.id, paid.payment_status, paid.amount_total) == (session.id, "paid", 1000)
    assert paid.metadata.purchase_id == "p-42"
    assert paid.payment_intent == fake_stripe.session(session.id)["payment_intent"]
    assert [d.status for d in fake_stripe.deliveries()] == [200]


def test_construct_event_refuses_an_altered_body_a_wrong_secret_and_a_stale_timestamp(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    event = fake_stripe.pay(_purchase(client).id, deliver=False)
    assert receiver.received == []
    original = event_body(event)
    altered = original.replace(b'"amount_total": 1000', b'"amount_total": 1')
    fake_stripe.send(event, body=altered, signature=fake_stripe.sign(original))
    fake_stripe.send(event, secret="whsec_someone_else")
    fake_stripe.send(event, timestamp=int(time.time()) - 301)
    fake_stripe.send(event, signature="")
    assert len(receiver.received) == 4
    for forged in receiver.received:
        with pytest.raises(stripe.SignatureVerificationError):
            _verified(forged, fake_stripe.webhook_secret)
    # Sent as it is, now, the same event passes (and can be sent again: a duplicate).
    fake_stripe.send(event)
    fake_stripe.send(event)
    first, second = receiver.received[4:]
    assert _verified(first, fake_stripe.webhook_secret).id == event["id"]
    assert second.body == first.body


def test_an_asynchronous_payment_completes_unpaid_then_settles_or_fails(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    settled, failed = _purchase(client, "a").id, _purchase(client, "b").id
    fake_stripe.pay(settled, asynchronous=True)
    fake_stripe.pay(failed, asynchronous=True)
    fake_stripe.settle_async(settled)
    fake_stripe.fail_async(failed)
    events = [_verified(r, fake_stripe.webhook_secret) for r in receiver.received]
    assert [(e.type, e.data.object.id, e.data.object.payment_status) for e in events] == [
        ("checkout.session.completed", settled, "unpaid"),
        ("checkout.session.completed", failed, "unpaid"),
        ("checkout.session.async_payment_succeeded", settled, "paid"),
        ("checkout.session.async_payment_failed", failed, "unpaid"),
    ]
    assert client.v1.checkout.sessions.retrieve(settled).payment_status == "paid"
    with pytest.raises(ValueError):
        fake_stripe.settle_async(failed)  # settled once, failed once: never both


def test_an_expired_session_sends_its_event_and_can_no_longer_be_paid(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    timed_out, expired_by_api = _purchase(client, "a").id, _purchase(client, "b").id
    fake_stripe.expire(timed_out)
    client.v1.checkout.sessions.expire(expired_by_api)
    events = [_verified(r, fake_stripe.webhook_secret) for r in receiver.received]
    assert [(e.type, e.data.object.id, e.data.object.status) for e in events] == [
        ("checkout.session.expired", timed_out, "expired"),
        ("checkout.session.expired", expired_by_api, "expired"),
    ]
    with pytest.raises(ValueError):
        fake_stripe.pay(timed_out)
    assert requests.get(f"{fake_stripe.root}/checkout/{timed_out}", timeout=5).status_code == 410


def test_refunds_carry_the_cumulative_amount_refunded_of_the_sessions_charge(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = _purchase(client)
    fake_stripe.pay(session.id)
    payment_intent = fake_stripe.session(session.id)["payment_intent"]
    fake_stripe.refund(session.id, 300)
    fake_stripe.refund(session.id, 700)
    partial, full = (_verified(r, fake_stripe.webhook_secret) for r in receiver.received[1:])
    assert partial.type == full.type == "charge.refunded"
    charges = [partial.data.object, full.data.object]
    assert [c.object for c in charges] == ["charge", "charge"]
    assert {c.payment_intent for c in charges} == {payment_intent}
    assert [(c.amount, c.amount_refunded, c.refunded) for c in charges] == [
        (1000, 300, False),
        (1000, 1000, True),
    ]
    assert full.to_dict()["data"]["previous_attributes"] == {
        "amount_refunded": 300,
        "refunded": False,
    }
    with pytest.raises(ValueError):
        fake_stripe.refund(session.id, 1)


def test_a_dispute_names_the_charge_and_the_payment_intent(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = _purchase(client)
    fake_stripe.pay(session.id)
    charge = fake_stripe.refund(session.id, 100)["data"]["object"]
    fake_stripe.dispute(session.id)
    event = _verified(receiver.received[-1], fake_stripe.webhook_secret)
    assert event.type == "charge.dispute.created"
    dispute = event.data.object
    assert dispute.id.startswith("dp_")
    assert (dispute.object, dispute.amount, dispute.currency) == ("dispute", 1000, "usd")
    assert (dispute.charge, dispute.payment_intent) == (charge["id"], charge["payment_intent"])
    assert dispute.payment_intent == fake_stripe.session(session.id)["payment_intent"]


def test_a_failed_delivery_is_recorded_not_raised(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = _purchase(client)
    receiver.status = 500
    event = fake_stripe.pay(session.id)
    receiver.close()
    fake_stripe.send(event)
    refused, unreachable = fake_stripe.deliveries()
    assert (refused.status, refused.delivered, refused.event["id"]) == (500, False, event["id"])
    assert (unreachable.status, unreachable.delivered) == (None, False)
    assert unreachable.error is not None


def test_the_payment_page_pays_and_redirects_to_the_success_url(
    fake_stripe: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = _purchase(client)
    page = requests.get(session.url, timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<span id="amount">10.00 USD</span>' in page.text
    assert f'<form method="post" action="/checkout/{session.id}/pay">' in page.text
    assert f'<a id="cancel" href="{CANCEL_URL}">Cancel</a>' in page.text
    paid = requests.post(f"{session.url}/pay", allow_redirects=False, timeout=5)
    assert paid.status_code == 303
    assert paid.headers["Location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session.id)
    [received] = receiver.received
    event = _verified(received, fake_stripe.webhook_secret)
    assert (event.type, event.data.object.id, event.data.object.payment_status) == (
        "checkout.session.completed",
        session.id,
        "paid",
    )
    assert requests.post(f"{session.url}/pay", allow_redirects=False, timeout=5).status_code == 410
    assert requests.get(f"{fake_stripe.root}/checkout/cs_test_nothing", timeout=5).status_code == (
        404
    )


def test_run_on_its_own_it_prints_the_services_environment() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_stripe", "--api-key", "sk_test_demo"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        environment = json.loads(server.stdout.readline())
        assert sorted(environment) == [
            "STRIPE_API_BASE",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET",
        ]
        assert environment["STRIPE_SECRET_KEY"] == "sk_test_demo"
        assert environment["STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
        demo = stripe.StripeClient(
            "sk_test_demo", base_addresses={"api": environment["STRIPE_API_BASE"]}
        )
        assert demo.v1.checkout.sessions.create(params=PURCHASE).status == "open"  # type: ignore[arg-type]
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()  # type: ignore[union-attr]
