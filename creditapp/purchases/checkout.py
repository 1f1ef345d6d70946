"""Stripe Checkout through the official SDK: the one place that speaks to Stripe.

`STRIPE_API_BASE` points the SDK at another host (the tests' and the demo's fake Stripe). Every
way the SDK can fail becomes `PaymentProviderUnavailable` (503): the caller stores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from creditapp.errors import CheckoutSessionUnknown, PaymentProviderUnavailable

# What a Checkout Session buys: one line item of this name.
PRODUCT_NAME = "creditapp credits"


@dataclass(frozen=True)
class Session:
    """A Checkout Session as Stripe says it is now."""

    id: str
    url: str | None
    status: str | None  # open, complete, expired
    payment_status: str | None  # paid, unpaid, no_payment_required
    amount_total: int | None
    payment_intent: str | None
    # The payment intent's status, when it came expanded (`retrieve_session`): a delayed
    # payment that failed leaves the session complete and unpaid, and its intent
    # `requires_payment_method` (or `canceled`).
    payment_intent_status: str | None = None

    @property
    def payment_failed(self) -> bool:
        """A completed checkout whose delayed payment failed. Only a completed one: while the
        session is open, a declined card leaves its intent `requires_payment_method` too, and
        the buyer may still pay with another."""
        return (
            self.status == "complete"
            and self.payment_status == "unpaid"
            and self.payment_intent_status in ("requires_payment_method", "canceled")
        )


def session_of(stripe_object: Any) -> Session:
    """A session from the SDK's object or an event's `data.object` (a dict)."""
    if isinstance(stripe_object, stripe.StripeObject):
        stripe_object = stripe_object.to_dict()
    get = stripe_object.get
    intent = get("payment_intent")
    return Session(
        id=str(get("id")),
        url=get("url"),
        status=get("status"),
        payment_status=get("payment_status"),
        amount_total=get("amount_total"),
        payment_intent=intent if isinstance(intent, str) or intent is None else intent.get("id"),
        payment_intent_status=intent.get("status") if isinstance(intent, dict) else None,
    )


class Checkout:
    """Stripe's Checkout Sessions, for one secret key. Used in a `with` block: its connection
    to Stripe is closed at the block's end (left to the garbage collector, every request that
    starts a purchase would leave a socket open until then)."""

    def __init__(self, *, secret_key: str, api_base: str | None, timeout_seconds: int):
        self._http = stripe.RequestsClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=1,
        )

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._http.close()

    def create_session(
        self,
        *,
        purchase_id: int,
        idempotency_key: str,
        amount_cents: int,
        quantity_name: str,
        success_url: str,
        cancel_url: str,
    ) -> Session:
        """A payment page for one purchase (Stripe answers the same session to a retry with the
        same `idempotency_key`)."""
        params: Any = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": amount_cents,
                        "product_data": {"name": f"{PRODUCT_NAME}: {quantity_name}"},
                    },
                    "quantity": 1,
                }
            ],
            "client_reference_id": str(purchase_id),
            "metadata": {"purchase_id": str(purchase_id)},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        options: Any = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._client.v1.checkout.sessions.create(params, options))

    def retrieve_session(self, session_id: str) -> Session:
        try:
            return session_of(
                self._client.v1.checkout.sessions.retrieve(
                    session_id, {"expand": ["payment_intent"]}
                )
            )
        except stripe.InvalidRequestError as error:  # this session's: Stripe answers the rest
            raise CheckoutSessionUnknown(details={"stripe": error.code or ""}) from error
        except stripe.StripeError as error:
            raise _unavailable(error) from error

    @staticmethod
    def _call(request: Any) -> Session:
        try:
            return session_of(request())
        except stripe.StripeError as error:
            raise _unavailable(error) from error


def _unavailable(error: stripe.StripeError) -> PaymentProviderUnavailable:
    return PaymentProviderUnavailable(details={"stripe": type(error).__name__})
