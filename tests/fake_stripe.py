"""A loopback HTTP server speaking Stripe's API, Checkout page and webhooks, so that tests and
the demo drive the official `stripe` SDK end to end without ever reaching Stripe.

The API (`/v1`) answers as Stripe does: form-encoded requests (`line_items[0][price_data]
[unit_amount]=...`), `Authorization: Bearer <api_key>` (anything else: 401), JSON objects with
their `"object"` field, errors as `{"error": {"type", "message", "code", "param"}}` with Stripe's
4xx statuses (which the SDK turns into its own exceptions), and `Idempotency-Key` replays.
It serves:

- `POST /v1/checkout/sessions`: a `checkout.session` whose `url` is this server's own payment
  page; parameters it does not know are refused (400 `parameter_unknown`), as Stripe does.
- `GET /v1/checkout/sessions/<id>`: the session as it is now (unknown: 404 `resource_missing`),
  its `payment_intent` an object with its `status` when `expand[]=payment_intent` asks.
- `POST /v1/checkout/sessions/<id>/expire`: Stripe's expire call (sends the `expired` event).

The payment page `GET /checkout/<id>` is plain HTML a browser can use: "Pay" posts to
`/checkout/<id>/pay`, which pays the session, sends `checkout.session.completed` and redirects
(303) to its `success_url` with `{CHECKOUT_SESSION_ID}` filled in; "Cancel" links to its
`cancel_url`.

Events are Stripe's (`evt_...`, `"object": "event"`, `data.object`, `api_version`), their body
the exact bytes that are signed (`event_body`), posted to `webhook_url` with
`Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of "<t>.<body>" with webhook_secret>`, which
`stripe.Webhook.construct_event` verifies. Actions on a session (`pay`, `settle_async`,
`fail_async`, `expire`, `refund`, `dispute`) change it as Stripe would and return the event,
once the receiver has answered (events are delivered synchronously, the payment page's before
its redirect); with `deliver=False` they change the session but only build the event, and
`send` delivers any event the way a test wants it: again, late, signed with another secret or
over another body. Deliveries are recorded in `deliveries()`, failed ones too; a failure is
never raised. An action on an unknown session raises `StripeError`, one Stripe would not allow
(paying an expired session, refunding more than was paid) `ValueError`.

Tests: construct `FakeStripe()`, put `environment()` in the service's environment, set
`webhook_url` to the service's webhook endpoint (a live server's), and call `reset()` between
tests. Through Flask's test client instead, take the event with `deliver=False` and post
`event_body(event)` with `Stripe-Signature: fake.sign(body)` yourself. `failure`
(`ERROR`: 500, `DISCONNECT`: the connection closed unanswered) and `delay` (seconds before
every API answer) make Stripe fail or hang. The demo runs it as its own process:
`python -m tests.fake_stripe --webhook-url http://127.0.0.1:5000/api/webhooks/stripe` prints
the environment as JSON on one line, then serves until killed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

# The version events are rendered in: the one this SDK speaks.
API_VERSION = stripe.api_version
# The values of `FakeStripe.failure`.
ERROR = "error"
DISCONNECT = "disconnect"
SESSION_LIFETIME = 24 * 3600  # Stripe's default `expires_at`: a day after creation
MINIMUM_USD_CENTS = 50  # Stripe refuses a USD Checkout total below $0.50
SESSION_PATH = re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)(?P<expire>/expire)?")
PAGE_PATH = re.compile(r"/checkout/(?P<id>[^/]+)(?P<pay>/pay)?")

# What `POST /v1/checkout/sessions` accepts (a subset of Stripe's parameters): `int` and `str`
# are scalars, `dict` is a free string-to-string map (metadata), a list holds items of its one
# element's shape. Anything else is refused as unknown, as Stripe does.
_PRODUCT_DATA = {"name": str, "description": str, "metadata": dict}
_PRICE_DATA = {"currency": str, "unit_amount": int, "product_data": _PRODUCT_DATA}
SESSION_PARAMETERS: dict[str, Any] = {
    "mode": str,
    "line_items": [{"price_data": _PRICE_DATA, "quantity": int}],
    "client_reference_id": str,
    "metadata": dict,
    "success_url": str,
    "cancel_url": str,
    "customer_email": str,
    "expires_at": int,
    "payment_method_types": [str],
    "locale": str,
    "expand": [str],
}

# Webhooks go straight to their URL, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Delivery:
    """One webhook POST: the event, and the receiver's status or why it was not reached."""

    event: dict[str, Any]
    url: str | None
    status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class StripeError(Exception):
    """An error answer of the API, in Stripe's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        error: dict[str, Any] = {"message": message, "type": kind}
        if code is not None:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            error["param"] = param
        self.body = {"error": error}


def stripe_id(prefix: str) -> str:
    """An id in Stripe's style: a type prefix and 24 letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def event_body(event: dict[str, Any]) -> bytes:
    """An event as Stripe posts it (indented JSON): the bytes its signature covers."""
    return json.dumps(event, indent=2).encode()


def signature_header(payload: bytes | str, *, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` for a body: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    moment = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{moment}.{text}".encode(), hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"


def parse_form(raw: str) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: `a[b][0][c]=v` → `{"a": {"b": [{"c":
    "v"}]}}`. Values stay the strings sent; lists come back in index order. Never fails:
    `_checked` says what is wrong with the result."""
    tree: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        name, _, rest = key.partition("[")
        parts = [name, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [name]
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):  # `a=1&a[b]=2`: the last one wins
                node[part] = {}
            node = node[part]
        last = parts[-1] if parts[-1] else str(len(node))  # `expand[]=x` appends
        node[last] = value
    return _with_lists(tree)


def _with_lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    values = {key: _with_lists(value) for key, value in node.items()}
    if values and all(key.isdigit() for key in values):
        return [values[key] for key in sorted(values, key=int)]
    return values


def _checked(value: Any, shape: Any, name: str) -> Any:
    """A parameter checked against its shape (`SESSION_PARAMETERS`), integers converted;
    Stripe's own error for an unknown parameter, a missing list or a malformed integer."""
    if shape is int:
        if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
            raise StripeError(
                400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
            )
        return int(value)
    if shape is str:
        if not isinstance(value, str):
            raise StripeError(400, f"Invalid string: {value}", param=name)
        return value
    if shape is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise StripeError(400, f"Invalid object: {name}", param=name)
        return {key: text for key, text in value.items() if text != ""}  # "" unsets a key
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise StripeError(400, f"Invalid array: {name}", param=name)
        return [_checked(item, shape[0], f"{name}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        raise StripeError(400, f"Invalid object: {name}", param=name)
    checked = {}
    for key, item in value.items():
        inner = f"{name}[{key}]" if name else key
        if key not in shape:
            raise StripeError(
                400, f"Received unknown parameter: {inner}", code="parameter_unknown", param=inner
            )
        checked[key] = _checked(item, shape[key], inner)
    return checked


def _required(params: dict[str, Any], *path: str | int) -> Any:
    node: Any = params
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError):
            name = str(path[0]) + "".join(f"[{part}]" for part in path[1:])
            raise StripeError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            ) from None
    return node


def _masked(api_key: str) -> str:
    prefix = api_key[:8] if api_key.startswith(("sk_test_", "sk_live_")) else ""
    secret = api_key[len(prefix) :]
    return prefix + "*" * max(len(secret) - 4, 0) + secret[-4:]


class FakeStripe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.api_key = "sk_test_" + secrets.token_hex(12)
        self.webhook_secret = "whsec_" + secrets.token_hex(16)
        self.webhook_url: str | None = None
        self.delivery_timeout = 10.0
        self.failure: str | None = None  # ERROR or DISCONNECT: how every API call fails
        self.delay = 0.0  # seconds before every API answer (a slow or hanging Stripe)
        self._sessions: dict[str, dict[str, Any]] = {}
        self._charges: dict[str, dict[str, Any]] = {}  # by session id, once paid
        self._settling: set[str] = set()  # sessions paid by a method that settles later
        self._intent_status: dict[str, str] = {}  # each payment intent's, by its id
        self._disputes: dict[str, dict[str, Any]] = {}  # by session id
        self._replays: dict[tuple[str, str], tuple[dict[str, Any], bytes]] = {}
        self._calls: list[dict[str, Any]] = []
        self._deliveries: list[Delivery] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # and the client's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                fake._answer(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fake._answer(self, "POST", self.rfile.read(length))

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a timeout test) closed the socket first

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def root(self) -> str:
        """The API base (`base_addresses={"api": root}`), also the payment pages' host."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def environment(self) -> dict[str, str]:
        """The environment that points the service here."""
        return {
            "STRIPE_API_BASE": self.root,
            "STRIPE_SECRET_KEY": self.api_key,
            "STRIPE_WEBHOOK_SECRET": self.webhook_secret,
        }

    def session(self, session_id: str) -> dict[str, Any]:
        """The session as `GET /v1/checkout/sessions/<id>` answers it now."""
        with self._lock:
            return copy.deepcopy(self._session(session_id))

    def calls(self) -> list[dict[str, Any]]:
        """Every API request: method, path, headers, `form` (the urlencoded body or query as
        sent) and `params` (decoded, values as the strings sent)."""
        with self._lock:
            return copy.deepcopy(self._calls)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def reset(self) -> None:
        """Forget sessions, calls and deliveries, and answer normally again; the keys, the
        webhook secret and URL stay (the service was configured with them)."""
        with self._lock:
            self._sessions.clear()
            self._charges.clear()
            self._settling.clear()
            self._intent_status.clear()
            self._disputes.clear()
            self._replays.clear()
            self._calls.clear()
            self._deliveries.clear()
        self.failure = None
        self.delay = 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # Actions on a session: what happens at Stripe when the buyer pays, the bank settles, the
    # session times out, the merchant refunds or the card holder disputes.

    def pay(
        self, session_id: str, *, asynchronous: bool = False, deliver: bool = True
    ) -> dict[str, Any]:
        """The buyer pays: `checkout.session.completed`. Paid at once (`payment_status`
        "paid"), or with `asynchronous` by a method that settles later ("unpaid" until
        `settle_async` or `fail_async`)."""
        with self._lock:
            session = self._session(session_id)
            self._require(session, status="open")
            session.update(
                status="complete",
                url=None,
                payment_intent=session["payment_intent"] or stripe_id("pi_"),
                payment_status="unpaid" if asynchronous else "paid",
                customer_details={"email": session["customer_email"] or "buyer@example.com"},
            )
            if asynchronous:
                self._settling.add(session_id)
                self._intent_status[session["payment_intent"]] = "processing"
            else:
                self._charge(session)
            event = self._event("checkout.session.completed", session)
        return self._deliver(event) if deliver else event

    def decline(self, session_id: str) -> None:
        """The buyer's card is declined: the session stays open with its payment intent back at
        `requires_payment_method` (the buyer may pay with another card; no event)."""
        with self._lock:
            session = self._session(session_id)
            self._require(session, status="open")
            session["payment_intent"] = session["payment_intent"] or stripe_id("pi_")
            self._intent_status[session["payment_intent"]] = "requires_payment_method"

    def settle_async(self, session_id: str, *, deliver: bool = True) -> dict[str, Any]:
        """A delayed payment succeeds: `checkout.session.async_payment_succeeded`."""
        with self._lock:
            session = self._settled(session_id)
            session["payment_status"] = "paid"
            self._charge(session)
            event = self._event("checkout.session.async_payment_succeeded", session)
        return self._deliver(event) if deliver else event

    def fail_async(self, session_id: str, *, deliver: bool = True) -> dict[str, Any]:
        """A delayed payment fails: `checkout.session.async_payment_failed` (the session stays
        complete and unpaid, as at Stripe)."""
        with self._lock:
            session = self._settled(session_id)
            # Stripe's payment intent asks for another payment method again.
            self._intent_status[session["payment_intent"]] = "requires_payment_method"
            event = self._event("checkout.session.async_payment_failed", session)
        return self._deliver(event) if deliver else event

    def expire(self, session_id: str, *, deliver: bool = True) -> dict[str, Any]:
        """The session times out unpaid (or is expired through the API):
        `checkout.session.expired`."""
        with self._lock:
            session = self._session(session_id)
            self._require(session, status="open")
            session.update(status="expired", url=None)
            event = self._event("checkout.session.expired", session)
        return self._deliver(event) if deliver else event

    def refund(
        self, session_id: str, amount_cents: int | None = None, *, deliver: bool = True
    ) -> dict[str, Any]:
        """A refund of `amount_cents` (default: all that is left) of a paid session's charge:
        `charge.refunded`, whose charge carries the cumulative `amount_refunded`, `refunded`
        once it is whole, and `previous_attributes` as Stripe sends them."""
        with self._lock:
            charge = self._paid_charge(session_id)
            left = charge["amount"] - charge["amount_refunded"]
            amount = left if amount_cents is None else amount_cents
            if not 0 < amount <= left:
                raise ValueError(f"cannot refund {amount} of a charge with {left} left")
            previous = {"amount_refunded": charge["amount_refunded"], "refunded": False}
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            if not charge["refunded"]:
                del previous["refunded"]  # only what changed
            event = self._event("charge.refunded", charge, previous)
        return self._deliver(event) if deliver else event

    def dispute(
        self, session_id: str, amount_cents: int | None = None, *, deliver: bool = True
    ) -> dict[str, Any]:
        """The card holder disputes the charge (by default its whole amount):
        `charge.dispute.created` with a `dispute` naming the charge and its payment intent."""
        with self._lock:
            charge = self._paid_charge(session_id)
            charge["disputed"] = True
            dispute = {
                "id": stripe_id("dp_"),
                "object": "dispute",
                "amount": charge["amount"] if amount_cents is None else amount_cents,
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "currency": charge["currency"],
                "created": int(time.time()),
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "reason": "fraudulent",
                "status": "needs_response",
            }
            self._disputes[session_id] = dispute
            event = self._event("charge.dispute.created", dispute)
        return self._deliver(event) if deliver else event

    def close_dispute(
        self, session_id: str, status: str = "won", *, deliver: bool = True
    ) -> dict[str, Any]:
        """The charge's dispute ends: `charge.dispute.closed` with its `status`, "won" (the
        merchant keeps the money), "warning_closed" (an inquiry that never became a
        chargeback) or "lost"."""
        with self._lock:
            dispute = self._disputes[session_id]
            previous = {"status": dispute["status"]}
            dispute["status"] = status
            event = self._event("charge.dispute.closed", dispute, previous)
        return self._deliver(event) if deliver else event

    # Webhooks

    def sign(
        self, payload: bytes | str, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        """The `Stripe-Signature` header for a body, now (or at `timestamp`), with the webhook
        secret (or another one, to forge it)."""
        return signature_header(payload, secret=secret or self.webhook_secret, timestamp=timestamp)

    def send(
        self,
        event: dict[str, Any],
        *,
        body: bytes | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> Delivery:
        """POSTs an event to `webhook_url` as Stripe does. `body` replaces its bytes (an
        altered body, still signed as given), `timestamp` and `secret` change how it is signed
        (stale, forged), `signature` replaces the header ("" leaves it out)."""
        payload = event_body(event) if body is None else body
        if signature is None:
            signature = self.sign(payload, timestamp=timestamp, secret=secret)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Cache-Control": "no-cache",
        }
        if signature:
            headers["Stripe-Signature"] = signature
        delivery = Delivery(event, self.webhook_url)
        if self.webhook_url is None:
            delivery.error = "no webhook_url configured"
        else:
            request = urllib.request.Request(
                self.webhook_url, data=payload, headers=headers, method="POST"
            )
            try:
                with _DIRECT.open(request, timeout=self.delivery_timeout) as answer:
                    delivery.status = answer.status
            except urllib.error.HTTPError as error:
                delivery.status = error.code
                error.close()
            except OSError as error:  # refused, reset, timed out
                delivery.error = repr(error)
        with self._lock:
            self._deliveries.append(delivery)
        return delivery

    def _deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        self.send(event)
        return event

    # State, under the lock

    def _session(self, session_id: str) -> dict[str, Any]:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise StripeError(
                404,
                f"No such checkout.session: '{session_id}'",
                code="resource_missing",
                param="session",
            ) from None

    @staticmethod
    def _require(session: dict[str, Any], **state: str) -> None:
        for field, wanted in state.items():
            if session[field] != wanted:
                raise ValueError(f"session {session['id']} has {field} {session[field]!r}")

    def _settled(self, session_id: str) -> dict[str, Any]:
        """A session whose delayed payment now succeeds or fails, once."""
        session = self._session(session_id)
        if session_id not in self._settling:
            raise ValueError(f"session {session_id} has no payment waiting to settle")
        self._settling.discard(session_id)
        return session

    def _charge(self, session: dict[str, Any]) -> None:
        self._intent_status[session["payment_intent"]] = "succeeded"
        self._charges[session["id"]] = {
            "id": stripe_id("ch_"),
            "object": "charge",
            "amount": session["amount_total"],
            "amount_captured": session["amount_total"],
            "amount_refunded": 0,
            "captured": True,
            "created": int(time.time()),
            "currency": session["currency"],
            "disputed": False,
            "livemode": False,
            "metadata": {},
            "paid": True,
            "payment_intent": session["payment_intent"],
            "refunded": False,
            "status": "succeeded",
        }

    def _paid_charge(self, session_id: str) -> dict[str, Any]:
        self._session(session_id)
        if session_id not in self._charges:
            raise ValueError(f"session {session_id} is not paid")
        return self._charges[session_id]

    def _event(
        self, kind: str, subject: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": copy.deepcopy(subject)}
        if previous is not None:
            data["previous_attributes"] = previous
        return {
            "id": stripe_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        params = _checked(params, SESSION_PARAMETERS, "")
        mode = _required(params, "mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StripeError(
                400, "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        items = _required(params, "line_items")
        currency = _required(params, "line_items", 0, "price_data", "currency").lower()
        amount = 0
        for index in range(len(items)):
            _required(params, "line_items", index, "price_data", "product_data", "name")
            unit_amount = _required(params, "line_items", index, "price_data", "unit_amount")
            amount += unit_amount * _required(params, "line_items", index, "quantity")
        if currency == "usd" and amount < MINIMUM_USD_CENTS:
            raise StripeError(
                400,
                "The Checkout Session's total amount due must add up to at least $0.50 usd",
                code="amount_too_small",
            )
        session_id = stripe_id("cs_test_")
        created = int(time.time())
        return {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": created,
            "currency": currency,
            "customer": None,
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": params.get("expires_at", created + SESSION_LIFETIME),
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": params.get("payment_method_types", ["card"]),
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "ui_mode": "hosted",
            "url": f"{self.root}/checkout/{session_id}",
        }

    # HTTP

    def _answer(self, handler: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        split = urlsplit(handler.path)
        if split.path.startswith("/v1/"):
            self._answer_api(handler, method, split.path, raw.decode() or split.query)
        else:
            self._answer_page(handler, method, split.path)

    def _answer_api(
        self, handler: BaseHTTPRequestHandler, method: str, path: str, form: str
    ) -> None:
        params = parse_form(form)
        with self._lock:
            self._calls.append(
                {
                    "method": method,
                    "path": path,
                    "headers": dict(handler.headers),
                    "form": form,
                    "params": params,
                }
            )
        if self.delay:
            time.sleep(self.delay)
        if self.failure == DISCONNECT:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.failure == ERROR:
            error = StripeError(
                500, "An unknown error occurred (the fake's failure switch).", kind="api_error"
            )
            self._send_json(handler, error.status, error.body)
            return
        events: list[dict[str, Any]] = []
        try:
            self._authenticate(handler.headers.get("Authorization"))
            idempotency_key = handler.headers.get("Idempotency-Key")
            if method != "POST" or not idempotency_key:
                with self._lock:
                    body = json.dumps(self._api_call(method, path, params, events)).encode()
                replayed = False
            else:
                # Looked up and saved in the same critical section: two requests with one key
                # make one session, even at the same moment.
                with self._lock:
                    body, replayed = self._idempotent_call(
                        idempotency_key, method, path, params, events
                    )
        except StripeError as error:
            self._send_json(handler, error.status, error.body)
            return
        # Delivered before the answer, so that the caller sees the event's effect once the call
        # returns (Stripe gives no order; a test wants one).
        for event in events:
            self.send(event)
        self._send_json(handler, 200, body, {"Idempotent-Replayed": "true"} if replayed else {})

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme != "Bearer" or key != self.api_key:
            raise StripeError(401, f"Invalid API Key provided: {_masked(key or scheme)}")

    def _idempotent_call(
        self,
        idempotency_key: str,
        method: str,
        path: str,
        params: dict[str, Any],
        events: list[dict[str, Any]],
    ) -> tuple[bytes, bool]:
        """A POST's answer, and whether it is the saved answer of an earlier POST with the same
        key (Stripe's replay); Stripe's error when that key was first used for another request.
        Under the lock."""
        fingerprint = {"path": path, "params": params}
        saved = self._replays.get((self.api_key, idempotency_key))
        if saved is not None:
            if saved[0] != fingerprint:
                raise StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{idempotency_key}' "
                    "if you meant to execute a different request.",
                    kind="idempotency_error",
                )
            return saved[1], True
        body = json.dumps(self._api_call(method, path, params, events)).encode()
        self._replays[(self.api_key, idempotency_key)] = (fingerprint, body)
        return body, False

    def _api_call(
        self, method: str, path: str, params: dict[str, Any], events: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The answer to one API request, under the lock; the events it causes go to `events`,
        sent once the lock is released."""
        if method == "POST" and path == "/v1/checkout/sessions":
            session = self._create_session(params)
            self._sessions[session["id"]] = session
            return copy.deepcopy(session)
        route = SESSION_PATH.fullmatch(path)
        if route and method == "GET" and not route["expire"]:
            found = copy.deepcopy(self._session(route["id"]))
            if "payment_intent" in params.get("expand", []) and found["payment_intent"]:
                intent = found["payment_intent"]
                found["payment_intent"] = {
                    "id": intent,
                    "object": "payment_intent",
                    "amount": found["amount_total"],
                    "currency": found["currency"],
                    "status": self._intent_status[intent],
                }
            return found
        if route and method == "POST" and route["expire"]:
            session = self._session(route["id"])
            if session["status"] != "open":
                raise StripeError(
                    400,
                    'Only Checkout Sessions with a status in ["open"] can be expired.',
                    code="checkout_session_not_open",
                )
            session.update(status="expired", url=None)
            events.append(self._event("checkout.session.expired", session))
            return copy.deepcopy(session)
        raise StripeError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    def _answer_page(self, handler: BaseHTTPRequestHandler, method: str, path: str) -> None:
        route = PAGE_PATH.fullmatch(path)
        if route is None or (method == "POST") != bool(route["pay"]):
            self._send_html(handler, 404, "Not found", "<p>There is no such page.</p>")
            return
        session_id = route["id"]
        try:
            session = self.session(session_id)
        except StripeError:
            self._send_html(handler, 404, "Not found", "<p>There is no such payment.</p>")
            return
        if session["status"] != "open":
            self._send_html(
                handler, 410, "No longer available", "<p>This payment is no longer open.</p>"
            )
            return
        if method == "GET":
            self._send_html(handler, 200, "Pay", _payment_form(session))
            return
        try:
            self.pay(session_id)
        except ValueError:  # paid by a concurrent request since
            self._send_html(
                handler, 410, "No longer available", "<p>This payment is no longer open.</p>"
            )
            return
        if not session["success_url"]:
            self._send_html(handler, 200, "Paid", "<p>Thank you: your payment succeeded.</p>")
            return
        location = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
        handler.send_response(303)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    @staticmethod
    def _send_json(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any] | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        encoded = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(encoded)))
        handler.send_header("Request-Id", stripe_id("req_"))
        handler.send_header("Stripe-Version", handler.headers.get("Stripe-Version") or API_VERSION)
        idempotency_key = handler.headers.get("Idempotency-Key")
        if idempotency_key:
            handler.send_header("Idempotency-Key", idempotency_key)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(encoded)

    @staticmethod
    def _send_html(handler: BaseHTTPRequestHandler, status: int, title: str, body: str) -> None:
        page = (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)} · Stripe (fake)</title></head>"
            f"<body><main>{body}</main></body></html>\n"
        ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)


def _payment_form(session: dict[str, Any]) -> str:
    cents = session["amount_total"]
    amount = f"{cents // 100}.{cents % 100:02d} {session['currency'].upper()}"
    cancel = (
        f'<a id="cancel" href="{html.escape(session["cancel_url"])}">Cancel</a>'
        if session["cancel_url"]
        else ""
    )
    return (
        f'<h1>Pay <span id="amount">{html.escape(amount)}</span></h1>'
        f'<form method="post" action="/checkout/{html.escape(session["id"])}/pay">'
        f'<button id="pay" type="submit">Pay</button></form>{cancel}'
    )


def main() -> None:
    """Serve on its own (the demo runs it in a process of its own): prints the service's
    environment (`STRIPE_API_BASE`, `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`) as JSON on one
    line, then serves until killed. `--webhook-url`: where events go; `--api-key`,
    `--webhook-secret`: fixed values instead of random ones."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhook-url")
    parser.add_argument("--api-key")
    parser.add_argument("--webhook-secret")
    arguments = parser.parse_args()
    fake = FakeStripe()
    fake.webhook_url = arguments.webhook_url
    fake.api_key = arguments.api_key or fake.api_key
    fake.webhook_secret = arguments.webhook_secret or fake.webhook_secret
    print(json.dumps(fake.environment()), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
