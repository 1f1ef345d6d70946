"""Money in: credits bought through Stripe Checkout, granted exactly once, never lost.

A purchase starts pending, with a Checkout Session made for it (`start`). Its credits are
granted from Stripe's events (`receive`): `checkout.session.completed` once paid, or
`checkout.session.async_payment_succeeded`; a lost event is recovered by the `sync-purchases`
job, which asks Stripe about purchases pending too long (`sync`). Whatever arrives (the same
event twice, both events, concurrent deliveries, the job at the same time) the credits are
granted once: every effect on a purchase runs in one transaction that holds the purchase's
row, and the grant is made only while the purchase has none. Each event id is recorded in the
transaction of its effect, so a duplicate delivery does nothing.

A refund (`charge.refunded`, cumulative) or a dispute (`charge.dispute.created`, the whole
purchase) takes the credits back from what the account has available (`ledger.claw_back`),
never making a balance negative: what could not be taken back is the purchase's `shortfall`,
which reconciliation reports. A dispute closed in the merchant's favour
(`charge.dispute.closed`, won) gives back what it took. Credits cost `credits / 10` US cents
(1 credit = $0.001).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, case, or_, select, tuple_
from sqlalchemy.exc import IntegrityError

from creditapp import ledger
from creditapp.auth.models import User
from creditapp.database import DbSession, dialect_of, write_transaction
from creditapp.errors import (
    CheckoutSessionUnknown,
    NotFound,
    PurchasesUnavailable,
    ValidationFailed,
)
from creditapp.ledger import outbox
from creditapp.ledger.sql import LedgerSql
from creditapp.money import MICRO_PER_CREDIT, format_credits
from creditapp.purchases.checkout import Checkout, Session, session_of
from creditapp.purchases.models import Purchase, StripeEvent, StripePaymentIntent

T = TypeVar("T")
_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
_LARGEST_CENTS = 2**63 - 1
# How long after its purchase a Checkout Session that Stripe does not know is flagged: past a
# session's life (Stripe's default, 24 h, which Checkout keeps here), it was never paid there,
# or with another key; before that it is asked about again on every run.
SESSION_UNKNOWN_AFTER = timedelta(hours=25)
# Credits are sold in steps of 10 (one US cent).
CREDITS_PER_CENT = 10
MICRO_PER_CENT = CREDITS_PER_CENT * MICRO_PER_CREDIT


@dataclass(frozen=True)
class Terms:
    """What may be bought, and where Stripe sends the buyer back."""

    min_credits: int
    max_credits: int
    expiry_days: int  # 0: purchased credits never expire
    public_base_url: str
    # A purchase pending longer than this is looked up in Stripe by the sync job.
    sync_after: timedelta


def terms_of(settings: Mapping[str, Any]) -> Terms:
    return Terms(
        min_credits=settings["PURCHASE_MIN_CREDITS"],
        max_credits=settings["PURCHASE_MAX_CREDITS"],
        expiry_days=settings["PURCHASE_EXPIRY_DAYS"],
        public_base_url=settings["PUBLIC_BASE_URL"],
        sync_after=timedelta(seconds=settings["PURCHASE_SYNC_AFTER_SECONDS"]),
    )


def checkout_of(settings: Mapping[str, Any]) -> Checkout:
    """Stripe, when purchases are configured (both secrets), else PurchasesUnavailable."""
    if not (settings["STRIPE_SECRET_KEY"] and settings["STRIPE_WEBHOOK_SECRET"]):
        raise PurchasesUnavailable()
    return Checkout(
        secret_key=settings["STRIPE_SECRET_KEY"],
        api_base=settings["STRIPE_API_BASE"],
        timeout_seconds=settings["STRIPE_TIMEOUT_SECONDS"],
    )


def cents_for(credits: int, terms: Terms) -> int:
    """The price of `credits` (µcr), or ValidationFailed naming `credits`."""
    whole, fraction = divmod(credits, MICRO_PER_CREDIT)
    if fraction or whole % CREDITS_PER_CENT:
        raise ValidationFailed(
            details={"credits": ["A whole number of credits, a multiple of 10."]}
        )
    if not terms.min_credits <= whole <= terms.max_credits:
        raise ValidationFailed(
            details={"credits": [f"From {terms.min_credits} to {terms.max_credits} credits."]}
        )
    return whole // CREDITS_PER_CENT


def start(
    session: DbSession,
    *,
    buyer: User,
    account_id: int,
    team_id: int | None,
    credits: int,
    terms: Terms,
    checkout: Checkout,
    now: datetime,
    on_started: Callable[[DbSession, Purchase], T],
) -> T:
    """A pending purchase with its Checkout Session. The purchase is stored first (Stripe is
    given its id), then Stripe is asked, with no transaction open; if Stripe fails, the
    purchase is deleted again: nothing is stored, and the error (503) is raised. Once Stripe
    answered, `on_started(session, purchase)` runs in the transaction that records the session
    (the caller keeps its response there); what it returns is returned."""
    amount_cents = cents_for(credits, terms)
    with write_transaction(session):
        purchase = Purchase(
            account_id=account_id,
            user_id=buyer.id,
            team_id=team_id,
            credits=credits,
            amount_cents=amount_cents,
            currency="usd",
            status="pending",
            created_at=now,
        )
        session.add(purchase)
        session.flush()
    base = terms.public_base_url.rstrip("/")
    try:
        made = checkout.create_session(
            purchase_id=purchase.id,
            # Unique beyond the id: a database restored or reset reuses ids, and Stripe would
            # answer a new purchase with an old one's session for 24 hours.
            idempotency_key=f"creditapp-purchase-{purchase.id}-{now.timestamp():.6f}",
            amount_cents=amount_cents,
            quantity_name=f"{format_credits(credits)} credits",
            success_url=f"{base}/purchases/{purchase.id}?checkout=success",
            cancel_url=f"{base}/purchases/{purchase.id}?checkout=cancel",
        )
    except BaseException:
        with write_transaction(session):
            session.delete(purchase)
        raise
    with write_transaction(session):
        purchase.checkout_session_id = made.id
        purchase.checkout_url = made.url
        session.flush()
        return on_started(session, purchase)


def of_account(account_id: int) -> Select[Purchase]:
    return select(Purchase).where(Purchase.account_id == account_id)


def with_shortfall() -> Select[Purchase]:
    """Purchases refunded or disputed after their credits were spent, oldest first."""
    return select(Purchase).where(Purchase.shortfall > 0).order_by(Purchase.id)


def get(session: DbSession, *, account_id: int | None, buyer_id: int, purchase_id: int) -> Purchase:
    """A purchase of the account (None: of no account the caller sees in full, a plain team
    member), or one the buyer made (for a team: the page Stripe sends the buyer back to knows
    only the purchase)."""
    purchase = session.get(Purchase, purchase_id)
    if purchase is None or (buyer_id != purchase.user_id and purchase.account_id != account_id):
        raise NotFound("No such purchase.")
    return purchase


# Events


@dataclass(frozen=True)
class Received:
    """What an event did: `outcome` (granted, duplicate, ignored, ...) and its purchase."""

    outcome: str
    purchase_id: int | None


_SESSION_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
_CHARGE_EVENTS = ("charge.refunded", "charge.dispute.created", "charge.dispute.closed")
# How a closed dispute leaves the money with the merchant: its credits are the buyer's again.
_DISPUTE_WON = ("won", "warning_closed")


def receive(
    session: DbSession,
    event: dict[str, Any],
    *,
    terms: Terms,
    context: ledger.AuditContext,
    now: datetime,
) -> Received:
    """Apply one verified Stripe event, once: its id is recorded in the transaction of its
    effect (a duplicate, even a concurrent one, does nothing)."""
    event_id, event_type = str(event.get("id")), str(event.get("type"))
    found = session.get(StripeEvent, event_id)
    if found is not None:
        return Received("duplicate", found.purchase_id)
    try:
        with write_transaction(session):
            record = StripeEvent(
                id=event_id, type=event_type[:100], outcome="received", received_at=now
            )
            session.add(record)
            session.flush()  # a concurrent twin's insert waits here, then fails
            received = _apply(
                session, event_type, _object_of(event), f"stripe:{event_id}", terms, context, now
            )
            record.purchase_id, record.outcome = received.purchase_id, received.outcome
    except IntegrityError:
        session.rollback()
        twin = session.get(StripeEvent, event_id)
        if twin is None:  # not a concurrent twin's id: a fault, not a duplicate (Stripe retries)
            raise
        return Received("duplicate", twin.purchase_id)
    return received


def _object_of(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    found = data.get("object") if isinstance(data, dict) else None
    return found if isinstance(found, dict) else {}


def _apply(
    session: DbSession,
    event_type: str,
    stripe_object: dict[str, Any],
    cause: str,
    terms: Terms,
    context: ledger.AuditContext,
    now: datetime,
) -> Received:
    if event_type in _SESSION_EVENTS:
        purchase = _locked(session, Purchase.checkout_session_id == str(stripe_object.get("id")))
        if purchase is None:
            return Received("unknown_purchase", None)
        paid = session_of(stripe_object)
        _link(session, purchase, paid.payment_intent)
        if event_type in ("checkout.session.async_payment_failed", "checkout.session.expired"):
            outcome = _failed(session, purchase, cause, context, now)
        elif event_type == "checkout.session.completed" and paid.payment_status != "paid":
            outcome = "awaiting_payment"  # an asynchronous payment: its own event says more
        else:
            outcome = _paid(session, purchase, paid, cause, terms, context, now)
        return Received(outcome, purchase.id)
    if event_type in _CHARGE_EVENTS:
        intent = _intent_of(stripe_object.get("payment_intent"))
        if intent is None:
            return Received("unknown_purchase", None)
        won = False
        if event_type == "charge.refunded":
            refunded = stripe_object.get("amount_refunded")
            if not isinstance(refunded, int) or isinstance(refunded, bool) or refunded < 0:
                return Received("ignored", None)
            # More than any purchase costs means all of it: kept within the column's range.
            said = _charge_facts(session, intent, refunded_cents=min(refunded, _LARGEST_CENTS))
        else:  # a dispute, opened, or closed (lost: as opened; won: its credits come back)
            won = event_type == "charge.dispute.closed" and stripe_object.get("status") in (
                _DISPUTE_WON
            )
            said = _charge_facts(session, intent, disputed=True, dispute_won=won)
        # Not linked yet: what the event said is kept, and applied when the purchase is.
        purchase = _locked(session, Purchase.payment_intent == intent)
        if purchase is None:
            return Received("unknown_purchase", None)
        _charged_back(purchase, *said)
        _take_back(session, purchase, cause, context, now)
        return Received("dispute_won" if won else "clawed_back", purchase.id)
    return Received("ignored", None)


def _charge_facts(
    session: DbSession,
    intent: str,
    *,
    refunded_cents: int = 0,
    disputed: bool = False,
    dispute_won: bool = False,
) -> tuple[int, bool, bool]:
    """What the charge events of the payment `intent` have said so far (the refunded cents,
    whether disputed, whether the dispute was won), this event's word included (none: zero,
    False, False). The intent's row stays
    locked until the transaction ends: a charge event and the linking of the intent's purchase
    run one after the other, and whichever comes second sees what the first wrote."""
    table = StripePaymentIntent.__table__
    insert = dialect_of(session).insert(table)
    upsert = insert.values(
        id=intent, refunded_cents=refunded_cents, disputed=disputed, dispute_won=dispute_won
    ).on_conflict_do_update(
        index_elements=["id"],
        set_={
            "refunded_cents": case(
                (
                    insert.excluded.refunded_cents > table.c.refunded_cents,
                    insert.excluded.refunded_cents,
                ),
                else_=table.c.refunded_cents,
            ),
            "disputed": or_(table.c.disputed, insert.excluded.disputed),
            "dispute_won": or_(table.c.dispute_won, insert.excluded.dispute_won),
        },
    )
    refunded, was_disputed, won = session.execute(
        upsert.returning(table.c.refunded_cents, table.c.disputed, table.c.dispute_won)
    ).one()
    return int(refunded), bool(was_disputed), bool(won)


def _intent_of(value: Any) -> str | None:
    """A payment intent's id as Stripe writes ids (of an expanded object, its `id`), or None."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and _STRIPE_ID.fullmatch(value) else None


def _link(session: DbSession, purchase: Purchase, payment_intent: str | None) -> None:
    """Name the purchase's payment intent, once, with what charge events said of it before
    (a refund or a dispute that came before the payment's own event, or the sync job)."""
    intent = _intent_of(payment_intent)
    if intent is None or purchase.payment_intent is not None:
        return
    purchase.payment_intent = intent
    _charged_back(purchase, *_charge_facts(session, intent))


def _charged_back(
    purchase: Purchase, refunded_cents: int, disputed: bool, dispute_won: bool
) -> None:
    """What refunds and a dispute said of the purchase's payment: the refunded cents never go
    down (a late, older event says less), and a dispute takes back the whole purchase until it
    is won, when only the refunds count again. `_take_back` takes the credits (or gives back
    what a won dispute had taken), once they were granted."""
    refunds = min(refunded_cents, purchase.amount_cents)
    if disputed and not dispute_won:
        purchase.refunded_cents = purchase.amount_cents
        purchase.status = "disputed"
    elif dispute_won and purchase.status == "disputed":
        purchase.refunded_cents = refunds
        # Its refunds, if any, set it apart again in `_take_back`.
        purchase.status = "paid" if purchase.grant_id is not None else "pending"
    else:
        purchase.refunded_cents = max(purchase.refunded_cents, refunds)


def _locked(session: DbSession, condition: Any) -> Purchase | None:
    """The purchase, its row locked until the transaction ends: effects on one purchase run
    one after another."""
    query = select(Purchase).where(condition).with_for_update()
    # The row as it is now, not as this session saw it in an earlier transaction.
    return session.scalars(query.execution_options(populate_existing=True)).first()


def _paid(
    session: DbSession,
    purchase: Purchase,
    checkout_session: Session,
    cause: str,
    terms: Terms,
    context: ledger.AuditContext,
    now: datetime,
) -> str:
    """Grant the purchase's credits, unless they were granted already (exactly once)."""
    if purchase.grant_id is not None:
        return "already_granted"
    if checkout_session.amount_total != purchase.amount_cents:
        return _flagged(
            session,
            purchase,
            "amount_mismatch",
            context,
            now,
            cause=cause,
            expected_cents=str(purchase.amount_cents),
            paid_cents=str(checkout_session.amount_total),
        )
    expires_at = now + timedelta(days=terms.expiry_days) if terms.expiry_days else None
    purchase.grant_id = _grant(
        session, purchase, purchase.credits, expires_at, cause, context, now
    ).grant_id
    if purchase.status != "disputed":  # disputed before the payment's event came
        purchase.status = "paid"
    purchase.problem = None
    purchase.paid_at = now
    _announce(session, purchase, "purchase.completed", now)
    # A refund or a dispute that arrived before the payment takes back what it says at once.
    _take_back(session, purchase, cause, context, now)
    return "granted"


def _unknown_to_stripe(
    session: DbSession,
    purchase_id: int,
    unknown: CheckoutSessionUnknown,
    context: ledger.AuditContext,
    now: datetime,
) -> str:
    """Flag a pending purchase whose session Stripe does not know (`problem`
    session_unknown): the sync job looks at it no more, and an admin finds it audited."""
    with write_transaction(session):
        purchase = _locked(session, Purchase.id == purchase_id)
        if purchase is None or purchase.status != "pending":
            return "settled_meanwhile"
        return _flagged(
            session,
            purchase,
            "session_unknown",
            context,
            now,
            checkout_session_id=str(purchase.checkout_session_id),
            stripe=str(unknown.details.get("stripe", "")),
        )


def _flagged(
    session: DbSession,
    purchase: Purchase,
    problem: str,
    context: ledger.AuditContext,
    now: datetime,
    **details: str,
) -> str:
    """Flag the purchase with `problem`, left to an admin, audited as `purchase_<problem>`."""
    purchase.problem = problem
    ledger.record_action(
        session,
        action=f"purchase_{problem}",
        context=context,
        now=now,
        account_id=purchase.account_id,
        details={"purchase_id": str(purchase.id), **details},
    )
    return problem


def _failed(
    session: DbSession,
    purchase: Purchase,
    cause: str,
    context: ledger.AuditContext,
    now: datetime,
) -> str:
    if purchase.status != "pending":
        return "ignored"  # paid (a late expiry of a paid session) or failed already
    purchase.status = "failed"
    ledger.record_action(
        session,
        action="purchase_failed",
        context=context,
        now=now,
        account_id=purchase.account_id,
        details={"purchase_id": str(purchase.id), "cause": cause},
    )
    return "failed"


def _take_back(
    session: DbSession,
    purchase: Purchase,
    cause: str,
    context: ledger.AuditContext,
    now: datetime,
) -> None:
    """Take back the credits of what was refunded so far and not yet taken back (nothing
    before the credits were granted); what the account does not have is the shortfall. A won
    dispute owes less than was taken: the shortfall is forgiven first, then what was taken
    is granted back."""
    if purchase.grant_id is None:
        return
    owed = min(purchase.refunded_cents * MICRO_PER_CENT, purchase.credits)
    due = owed - purchase.clawed_back - purchase.shortfall
    if due < 0:
        _give_back(session, purchase, -due, cause, context, now)
    elif due > 0:
        why = "disputed" if purchase.status == "disputed" else "refunded"
        taken = ledger.claw_back(
            session,
            account_id=purchase.account_id,
            up_to=due,
            reason=f"purchase {purchase.id} {why}",
            reference=_reference(purchase),
            context=context,
            now=now,
            audit_details={"purchase_id": str(purchase.id), "cause": cause},
            user_id=purchase.user_id,
            grant_id=purchase.grant_id,
        )
        purchase.clawed_back += taken
        purchase.shortfall += due - taken
    if purchase.status != "disputed" and purchase.refunded_cents:
        whole = purchase.refunded_cents >= purchase.amount_cents
        purchase.status = "refunded" if whole else "partially_refunded"
    if due > 0:
        _announce(session, purchase, "purchase.refunded", now)


def _reference(purchase: Purchase) -> str:
    """What the ledger's entries of the purchase (its grants, its claw-backs) are named by."""
    return f"purchase:{purchase.id}"


def _grant(
    session: DbSession,
    purchase: Purchase,
    amount: int,
    expires_at: datetime | None,
    cause: str,
    context: ledger.AuditContext,
    now: datetime,
    *,
    why: str = "",
) -> ledger.GrantResult:
    """A `purchase` grant of the purchase's buyer, naming the purchase (its credits, or what a
    won dispute gives back: `why`)."""
    return ledger.grant(
        session,
        account_id=purchase.account_id,
        amount=amount,
        source="purchase",
        reason=f"purchase {purchase.id} {why}".rstrip(),
        context=context,
        now=now,
        expires_at=expires_at,
        reference=_reference(purchase),
        audit_details={"purchase_id": str(purchase.id), "cause": cause},
        user_id=purchase.user_id,
    )


def _give_back(
    session: DbSession,
    purchase: Purchase,
    excess: int,
    cause: str,
    context: ledger.AuditContext,
    now: datetime,
) -> None:
    """A dispute won: what it took beyond what is refunded is the buyer's again. Its shortfall
    is forgiven first; then what the claw-backs took, newest first, is granted back with the
    expiry of the grant it was taken from (a promotion's credits stay a promotion's), but for
    what has expired since, which the buyer would have lost anyway."""
    forgiven = min(purchase.shortfall, excess)
    purchase.shortfall -= forgiven
    returned = min(purchase.clawed_back, excess - forgiven)
    purchase.clawed_back -= returned
    if not returned:  # all of it was forgiven: nothing to look up or give
        return
    back: dict[datetime | None, int] = {}
    for amount, expires_at in ledger.clawed_back_from(
        session, account_id=purchase.account_id, reference=_reference(purchase)
    ):
        part = min(amount, returned)
        returned -= part
        if expires_at is None or expires_at > now:
            back[expires_at] = back.get(expires_at, 0) + part
        if not returned:
            break
    for expires_at, amount in back.items():
        _grant(session, purchase, amount, expires_at, cause, context, now, why="dispute won")


def _announce(session: DbSession, purchase: Purchase, event_type: str, now: datetime) -> None:
    """The purchase's event, in the transaction of what changed it (its grant, its claw-back)."""
    outbox.emit(
        LedgerSql(session),
        account_id=purchase.account_id,
        event_type=event_type,
        data={
            "purchase_id": str(purchase.id),
            "status": purchase.status,
            "credits": format_credits(purchase.credits),
            "amount_cents": purchase.amount_cents,
            "currency": purchase.currency,
            "refunded_cents": purchase.refunded_cents,
            "clawed_back": format_credits(purchase.clawed_back),
            "shortfall": format_credits(purchase.shortfall),
            "buyer_id": str(purchase.user_id),
        },
        now=now,
    )


# The sync job


def pending_too_long(
    session: DbSession,
    *,
    terms: Terms,
    now: datetime,
    after: tuple[datetime, int] | None = None,
    limit: int = 200,
) -> list[tuple[datetime, int]]:
    """Pending purchases older than `terms.sync_after`, oldest first, after the position
    `after` (a purchase's `created_at` and id): each with its position, to page through them
    all. One flagged (an amount Stripe took that is not its price, a session Stripe does not
    know) is left to an admin: asking again would flag it again."""
    query = select(Purchase.created_at, Purchase.id).where(
        Purchase.status == "pending",
        Purchase.created_at <= now - terms.sync_after,
        Purchase.problem.is_(None),
    )
    if after is not None:
        query = query.where(tuple_(Purchase.created_at, Purchase.id) > tuple_(*after))
    query = query.order_by(Purchase.created_at, Purchase.id).limit(limit)
    return [(created_at, purchase_id) for created_at, purchase_id in session.execute(query)]


def sync(
    session: DbSession,
    purchase_id: int,
    *,
    checkout: Checkout,
    terms: Terms,
    context: ledger.AuditContext,
    now: datetime,
) -> str:
    """Ask Stripe how a pending purchase's session ended and apply it as its webhook would
    have: paid → granted (once, whoever gets there first), expired or its delayed payment
    failed → failed."""
    session_id, created_at = session.execute(
        select(Purchase.checkout_session_id, Purchase.created_at).where(Purchase.id == purchase_id)
    ).one()
    session.rollback()  # the read's transaction ends before Stripe is asked
    # None: its Checkout Session was never made (the process died before Stripe answered).
    # Stripe is asked with no transaction open.
    try:
        checkout_session = None if session_id is None else checkout.retrieve_session(session_id)
    except CheckoutSessionUnknown as unknown:
        if created_at > now - SESSION_UNKNOWN_AFTER:
            # Its session could still be paid: asked again next run (a key set wrong for a
            # while must not flag every purchase), the purchases after it asked now.
            return "stripe_refused"
        return _unknown_to_stripe(session, purchase_id, unknown, context, now)
    with write_transaction(session):
        purchase = _locked(session, Purchase.id == purchase_id)
        if purchase is None or purchase.status != "pending":
            return "settled_meanwhile"
        purchase.looked_up_at = now
        if (
            checkout_session is None
            or checkout_session.status == "expired"
            or checkout_session.payment_failed  # its async_payment_failed event was lost
        ):
            return _failed(session, purchase, "sync-purchases", context, now)
        if checkout_session.payment_status == "paid":
            _link(session, purchase, checkout_session.payment_intent)
            return _paid(session, purchase, checkout_session, "sync-purchases", terms, context, now)
        return "still_pending"
