"""The metered call: one provider call paid from one account, whichever door it came through.

A call is three steps, and no database transaction or lock is open during the provider call in
the middle:
1. check the caller's tier allows the model and the output asked for, find the price in force
   and hold the worst case (a call refused here, by the tier, the price book, `max_credits` or
   the balance, never reaches the provider);
2. call the provider;
3. in one transaction, price the normalized usage, settle the hold, store the usage record and
   run the caller's `on_settled` hook, where the caller keeps what goes with the charge (chat's
   messages, the response an Idempotency-Key replays): it commits with the charge, or neither
   does.
A provider failure voids the hold and charges nothing. A settle that fails voids the hold and
keeps the call as unbilled, so that no call the provider billed goes unrecorded. A reply that
is empty although the provider billed for it is charged as the provider reported and refunded
at once by a compensation (or by the retry job, when paying at once fails). A streamed reply is
relayed as it comes; one cut short is charged for what was delivered, never above the hold.

Billing knows accounts, callers and requests, never what a call is for: the caller names itself
in the hold's `reference`, and a conversation in `conversation_id`.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog
from prometheus_client import Histogram
from sqlalchemy import Select, select

from creditapp import accounts, ledger
from creditapp.auth import tiers, users
from creditapp.auth.models import User
from creditapp.billing import compensations
from creditapp.billing.models import Compensation, UnbilledUsage, UsageRecord
from creditapp.database import DbSession, write_transaction
from creditapp.errors import (
    CreditAppError,
    DependencyUnavailable,
    InsufficientCredits,
    MaxCreditsExceeded,
    ModelNotAllowed,
    ProviderFailed,
    SpendCapReached,
    StreamTimedOut,
    ValidationFailed,
)
from creditapp.ledger import caps as spend_caps
from creditapp.ledger.sql import LedgerSql, Statement
from creditapp.metering.estimate import estimate_tokens, upper_bound_tokens
from creditapp.metering.providers import (
    ChatMessage,
    ChatRequest,
    Completion,
    ProviderError,
    Providers,
    ReplyStream,
    Sampling,
)
from creditapp.metering.usage import Usage
from creditapp.metrics import CREDITS_CHARGED, MESSAGES, PROVIDER_DURATION, UNPRICED
from creditapp.pricing import book
from creditapp.pricing.models import Price
from creditapp.stored_text import fitted

log = structlog.get_logger(__name__)

T = TypeVar("T")
H = TypeVar("H")

Clock = Callable[[], datetime]
# What a call that failed had committed, removed in the transaction that frees its
# Idempotency-Key (`creditapp.idempotency.Undo`).
Undo = Callable[[DbSession], None]


def model_allowed(allowed_models: Iterable[str], provider: str, model: str) -> bool:
    """`allowed_models` holds "provider:model", "provider:*" or "*"."""
    return bool({"*", f"{provider}:*", f"{provider}:{model}"} & set(allowed_models))


@dataclass(frozen=True)
class Meter:
    """What every metered call runs with: the providers, how long a hold lives, the clock, and
    the seconds of a provider's silence after which a stream says so (a keep-alive)."""

    providers: Providers
    hold_ttl: timedelta
    clock: Clock
    silence: float
    # Runs work with a database session of its own, in the calling thread: a stream past its
    # deadline is settled from a timer's thread while the request's may be blocked writing.
    in_own_session: Callable[[Callable[[DbSession], Any]], Any]
    # How long after its hold a stream is settled at the latest, whatever is still to come (a
    # client that reads slowly, or a provider that trickles, would otherwise outlive the hold
    # and its Idempotency-Key's claim: the late settle would find the hold expired, and a retry
    # would call the provider again). Shorter than `hold_ttl` by the time that settle needs.
    stream_deadline: timedelta


@dataclass(frozen=True)
class MeteredRequest:
    """A chat request in every provider's terms. `max_tokens` None is the tier's default;
    `max_credits`, when given, is the most the call may hold or charge."""

    provider: str
    model: str
    system_prompt: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    max_credits: int | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Origin:
    """Where a call comes from: the hold's `reference` ("conversation:12"), and the
    conversation its usage record names, if any."""

    reference: str
    conversation_id: int | None = None


@dataclass(frozen=True)
class MeteredCall:
    """One call to meter: the account that pays, the caller (whose tier governs the call, and
    who is recorded as making it), the request, where it comes from, and the spending caps it
    is held to."""

    account_id: int
    caller: User
    request: MeteredRequest
    origin: Origin
    # Spending caps the call counts against (an API key's limit), besides the account.
    caps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Held:
    """The worst case reserved for a call, and when the call was asked for."""

    hold_id: int
    amount: int
    at: datetime


@dataclass(frozen=True)
class Settled:
    """A charged call, as its settle transaction sees it: the usage record, the reply's text
    (empty when the provider gave none: then `compensation` refunds a charge), how the call
    ended, and what cut a stream short: a provider's failure, or its deadline
    (`StreamTimedOut`)."""

    held: Held
    usage_id: int
    text: str
    usage: Usage
    ending: str
    credits_charged: int
    balance: ledger.Balance
    compensation: Compensation | None
    failure: CreditAppError | None
    at: datetime
    max_tokens: int  # the most output the call was allowed (asked for, or the tier's default)


@dataclass(frozen=True)
class Charged(Generic[T]):
    """A call charged: its outcome (`balance` after a refund owed was paid at once) and what
    `on_settled` kept in the settle transaction."""

    settled: Settled
    kept: T


@dataclass(frozen=True)
class _Priced:
    """A call checked against the tier and priced: what is held, called and recorded."""

    account_id: int
    user_id: int
    origin: Origin
    provider: str
    model: str
    price: Price
    request: ChatRequest
    hold_amount: int
    max_credits: int | None
    caps: tuple[int, ...]
    renews: bool  # the caller's tier grants credits every period


def _price(session: DbSession, metered: MeteredCall, *, now: datetime) -> _Priced:
    request = metered.request
    provider, model = request.provider, request.model
    # Both kept by the process (`creditapp.kept`): no round trip on a warm path.
    tier = tiers.terms(session, metered.caller.tier_name)
    assert tier is not None, "a user's tier exists (a foreign key)"
    price = book.kept_in_force(session, provider=provider, model=model, at=now)
    # A call refused here is counted with the model it was for.
    try:
        if not model_allowed(tier.allowed_models, provider, model):
            raise ModelNotAllowed(
                f"Your tier ({tier.name}) does not allow {provider}:{model}.",
                details={"tier": tier.name, "model": f"{provider}:{model}"},
            )
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = tier.default_max_tokens
        elif max_tokens > tier.max_max_tokens:
            raise ValidationFailed(
                details={
                    "max_tokens": [f"At most {tier.max_max_tokens} on your tier ({tier.name})."]
                }
            )
        if price is None:
            raise book.not_priced(provider=provider, model=model)
        if book.charges_nothing(price):  # a catalogue's row, or one from before it was refused
            raise book.priced_at_zero(provider=provider, model=model)
        chat = ChatRequest(
            model, request.system_prompt, request.messages, max_tokens, request.sampling
        )
        input_bound = upper_bound_tokens([chat.system_prompt, *(m.content for m in chat.messages)])
        hold_amount = book.worst_case(price, input_tokens=input_bound, max_output_tokens=max_tokens)
        if request.max_credits is not None and hold_amount > request.max_credits:
            raise MaxCreditsExceeded(required=hold_amount, max_credits=request.max_credits)
    except CreditAppError:
        # An unpriced model is counted under one name: the request names it, and each new name
        # would be a new series in every worker's metrics for as long as it runs.
        MESSAGES.labels(provider, model if price is not None else UNPRICED, "refused").inc()
        raise
    return _Priced(
        metered.account_id,
        metered.caller.id,
        metered.origin,
        provider,
        model,
        price,
        chat,
        hold_amount,
        request.max_credits,
        metered.caps,
        tier.grants_credits,
    )


def _hold(
    session: DbSession,
    priced: _Priced,
    *,
    meter: Meter,
    context: ledger.AuditContext,
    now: datetime,
) -> Held:
    """Reserve the call's worst case (inside the caller's transaction)."""
    held = ledger.hold(
        session,
        account_id=priced.account_id,
        amount=priced.hold_amount,
        ttl=meter.hold_ttl,
        context=context,
        now=now,
        reference=priced.origin.reference,
        caps=priced.caps,
        spender=priced.user_id,
    )
    return Held(held.hold_id, held.amount, now)


def _placed(
    session: DbSession,
    metered: MeteredCall,
    priced: _Priced,
    place: Callable[[], T],
    *,
    context: ledger.AuditContext,
    now: datetime,
) -> T:
    """`place()`: the hold's transaction, and what it returns. Refused for credits just after
    the caller's subscription period ended, before the refresh job came by (it comes every few
    minutes): the new period's credits are granted at once, as the job would, and the hold
    placed again, once. A refusal is counted with the call's model."""
    try:
        try:
            return place()
        except InsufficientCredits:
            if not (priced.renews and _renewed(session, metered, context=context, now=now)):
                raise
        return place()
    except (InsufficientCredits, SpendCapReached) as refused:
        MESSAGES.labels(priced.provider, priced.model, refused.code).inc()
        raise


def _renewed(
    session: DbSession, metered: MeteredCall, *, context: ledger.AuditContext, now: datetime
) -> bool:
    """Whether the caller's subscription credits for the period containing `now` were due
    (paid from their own account, their tier grants credits, none granted for the period yet),
    and are now granted: here, or by a concurrent call that got there first."""
    caller = metered.caller
    due = metered.account_id == accounts.of_user(session, caller.id) and users.subscription_due(
        session, user=caller, account_id=metered.account_id, now=now
    )
    session.rollback()  # the reads end here; the grant takes a write transaction of its own
    if not due:
        return False
    with write_transaction(session):
        renewed = users.refresh_subscription(
            session, user=caller, account_id=metered.account_id, context=context, now=now
        )
    return renewed is not None


@contextmanager
def _refusal_announced(session: DbSession, *, now: datetime) -> Iterator[None]:
    """A hold refused by a spending cap rolls back; the cap's event is then written in a
    transaction of its own (once per cap and period). The refusal is what the caller hears:
    if that write fails (the database just went away), the event is not written, since the
    refusal changed nothing, and the error is logged."""
    try:
        yield
    except SpendCapReached as refused:
        try:
            with write_transaction(session):
                spend_caps.announce_reached(LedgerSql(session), cap_id=refused.cap_id, now=now)
        except Exception as error:  # the caller is told the refusal, whatever became of this
            log.error("cap_refusal_not_announced", cap_id=refused.cap_id, error=str(error))
        raise


def _usage_of(completion: Completion, request: ChatRequest) -> Usage:
    if completion.usage is not None:
        return _reported(completion.usage, request)
    prompt = [request.system_prompt, *(m.content for m in request.messages)]
    written = estimate_tokens([completion.text]) if completion.text else 0
    return Usage(
        input_tokens=estimate_tokens(prompt),
        output_tokens=min(written, request.max_tokens),
        estimated=True,
    )


def _reported(usage: Usage, request: ChatRequest) -> Usage:
    """The provider's usage, its output counted as at most the call's `max_tokens` (a report
    of more is the provider's error, logged, and not the caller's to pay)."""
    within = usage.output_within(request.max_tokens)
    if within is not usage:
        log.warning(
            "provider_usage_above_max_tokens",
            output_tokens=usage.output_tokens,
            max_tokens=request.max_tokens,
        )
    return within


def _provider_failed(error: ProviderError) -> ProviderFailed:
    log.warning(
        "provider_failed", provider=error.provider, reason=error.reason, status=error.status
    )
    return ProviderFailed(details={"provider": error.provider, "reason": error.reason})


# What a caller writes first in the hold's transaction (chat and the gateway claim the
# request's Idempotency-Key there, so that a hold refused rolls the claim back with it); it
# returns what to call once that transaction committed.
BeforeHold = Callable[[DbSession], Callable[[], None]]


def _nothing_before(_session: DbSession) -> Callable[[], None]:
    """A call that writes nothing before its hold."""
    return _nothing_after


# What a caller does first in the settle's transaction (chat and the gateway lock their claim
# of the Idempotency-Key there, before the hold and the account, as they claimed it).
BeforeSettle = Callable[[DbSession], None]


def _nothing_before_settle(_session: DbSession) -> None:
    """A call that does nothing before its settle."""


def _nothing_after() -> None:
    """Nothing to say once the hold committed."""


def complete(
    session: DbSession,
    metered: MeteredCall,
    *,
    meter: Meter,
    context: ledger.AuditContext,
    on_settled: Callable[[DbSession, Settled], T],
    before_hold: BeforeHold = _nothing_before,
    before_settle: BeforeSettle = _nothing_before_settle,
) -> Charged[T]:
    """Call the provider for the request, paid from the call's account, and charge exactly
    what the call cost.

    `before_hold(session)` runs first in the hold's transaction (see `BeforeHold`), and
    `before_settle(session)` first in the settle's (see `BeforeSettle`).
    `on_settled(session, settled)` runs inside the settle transaction; what it returns is
    handed back in `Charged.kept`. If it fails, nothing is charged: the hold is voided and the
    call kept as unbilled.
    """
    asked_at = meter.clock()
    priced = _price(session, metered, now=asked_at)

    def place() -> tuple[Callable[[], None], Held]:
        with _refusal_announced(session, now=asked_at), write_transaction(session):
            hold_committed = before_hold(session)
            return hold_committed, _hold(
                session, priced, meter=meter, context=context, now=asked_at
            )

    hold_committed, held = _placed(session, metered, priced, place, context=context, now=asked_at)
    hold_committed()

    try:
        with PROVIDER_DURATION.labels(priced.provider, priced.model).time():
            completion = meter.providers.get(priced.provider).complete(priced.request)
        usage = _usage_of(completion, priced.request)
    except ProviderError as error:
        MESSAGES.labels(priced.provider, priced.model, "provider_error").inc()
        failure = _provider_failed(error)
        with write_transaction(session):
            ledger.void(session, hold_id=held.hold_id, context=context, now=meter.clock())
        raise failure from error
    except BaseException:
        # Anything else: release the hold before the error propagates (the expiry job would).
        with write_transaction(session):
            ledger.void(session, hold_id=held.hold_id, context=context, now=meter.clock())
        raise

    call = _AnsweredCall(
        priced=priced,
        held=held,
        completion=completion,
        usage=usage,
        cost=book.cost(priced.price, usage),
    )
    return _finish(
        session,
        call,
        on_settled=on_settled,
        before_settle=before_settle,
        meter=meter,
        context=context,
    )


@dataclass(frozen=True)
class _AnsweredCall:
    """A provider call that answered: what is settled, or kept as unbilled if that fails."""

    priced: _Priced
    held: Held
    completion: Completion
    usage: Usage
    cost: int
    ending: str = "completed"  # or how a stream ended early (CALL_ENDINGS)
    failure: CreditAppError | None = None

    @property
    def to_charge(self) -> int:
        """What the settle asks for: the cost, except that a streamed reply that ended early or
        whose usage was estimated is never charged above its hold, and no call above its
        `max_credits`."""
        if self.ending == "completed" and not self.usage.estimated:
            charge = self.cost
        else:
            charge = min(self.cost, self.held.amount)
        if self.priced.max_credits is not None:
            return min(charge, self.priced.max_credits)
        return charge

    def columns(self, now: datetime) -> dict[str, Any]:
        """What a usage record and an unbilled call both say of it (`ProviderCall`)."""
        return {
            "user_id": self.priced.user_id,
            "account_id": self.priced.account_id,
            "conversation_id": self.priced.origin.conversation_id,
            "hold_id": self.held.hold_id,
            "price_id": self.priced.price.id,
            "provider": self.priced.provider,
            "model": self.priced.model,
            **self.usage.counts(),
            "estimated": self.usage.estimated,
            "ending": self.ending,
            "cost": self.cost,
            "created_at": now,
        }


# The `outcome` label of a charged call, by how it ended.
_OUTCOMES = {
    "completed": "charged",
    "client_closed": "client_closed",
    "provider_failed": "provider_error",
    "timed_out": "timed_out",
}


def _finish(
    session: DbSession,
    call: _AnsweredCall,
    *,
    on_settled: Callable[[DbSession, Settled], T],
    before_settle: BeforeSettle,
    meter: Meter,
    context: ledger.AuditContext,
) -> Charged[T]:
    """Settle an answered call and run `on_settled`, in one transaction; then count it, and pay
    at once a refund it is owed."""
    provider, model = call.priced.provider, call.priced.model
    try:
        with write_transaction(session):
            before_settle(session)
            settled = _settle(session, call, context=context, now=meter.clock())
            kept = on_settled(session, settled)
    except BaseException as error:
        MESSAGES.labels(provider, model, "settle_failed").inc()
        _keep_unbilled(session, call, error=error, context=context, now=meter.clock())
        raise
    replied = bool(call.completion.text) or call.ending != "completed"
    MESSAGES.labels(provider, model, _OUTCOMES[call.ending] if replied else "refunded").inc()
    CREDITS_CHARGED.labels(provider, model).inc(settled.credits_charged)
    if settled.compensation is not None:
        settled = _pay_at_once(session, settled, context=context, now=meter.clock())
    return Charged(settled, kept)


def _settle(
    session: DbSession, call: _AnsweredCall, *, context: ledger.AuditContext, now: datetime
) -> Settled:
    """Charge the call, store its usage record, and owe a refund of an empty reply the provider
    billed for, in the caller's transaction."""
    sql = LedgerSql(session)
    # Its id taken with the settle's first statements: the record is then a write that goes
    # with the settle's (`LedgerSql`), and the caller's rows can name it without a read.
    new_usage_id = sql.new_id("usage_records")
    resolution = ledger.settle(
        session, hold_id=call.held.hold_id, actual=call.to_charge, context=context, now=now
    )
    columns = call.columns(now) | {"created_at": sql.time(now)}
    usage_id = sql.insert(
        INSERT_USAGE_RECORD, new_usage_id, **columns, credits_charged=resolution.captured
    )
    compensation = None
    if not call.completion.text and call.ending == "completed" and resolution.captured > 0:
        compensation = compensations.record(
            session,
            usage=session.get_one(UsageRecord, usage_id),
            reason="the provider returned no reply",
            requested_by="system",
            now=now,
        )
    return Settled(
        held=call.held,
        usage_id=usage_id,
        text=call.completion.text,
        usage=call.usage,
        ending=call.ending,
        credits_charged=resolution.captured,
        balance=resolution.balance
        or ledger.balance(session, account_id=call.priced.account_id, now=now),
        compensation=compensation,
        failure=call.failure,
        at=now,
        max_tokens=call.priced.request.max_tokens,
    )


# Every column of a usage record but its id (taken first) and `rolled_up` (the roll-up job's):
# `_AnsweredCall.columns` and the charge. Read from the table, so that a column added to it and
# to `columns` is written (a key `columns` lacks is a KeyError, not a column left unwritten).
_USAGE_RECORD_COLUMNS = tuple(
    column.name
    for column in UsageRecord.__table__.columns
    if column.name not in ("id", "rolled_up")
)
# A usage record as the settle writes it (`_AnsweredCall.columns` and its charge).
INSERT_USAGE_RECORD = Statement(
    f"""INSERT INTO usage_records (id, {", ".join(_USAGE_RECORD_COLUMNS)})
        VALUES (:id, {", ".join(f":{column}" for column in _USAGE_RECORD_COLUMNS)})
        RETURNING id"""
)


def _keep_unbilled(
    session: DbSession,
    call: _AnsweredCall,
    *,
    error: BaseException,
    context: ledger.AuditContext,
    now: datetime,
) -> None:
    """The provider answered but the settle transaction failed: release the hold at once
    (nothing is charged to the account) and keep the usage as unbilled, in a transaction of its
    own, so that the call is neither lost nor left reserving credits until the expiry job."""
    log.error(
        "settle_failed",
        hold_id=call.held.hold_id,
        error=type(error).__name__,
        provider=call.priced.provider,
        model=call.priced.model,
        cost=call.cost,
        **call.usage.counts(),
    )
    try:
        with write_transaction(session):
            voided = ledger.void(session, hold_id=call.held.hold_id, context=context, now=now)
            if voided.status == "settled":
                # The settle's commit failed as far as this process could tell, yet reached the
                # database: the call is billed (and its answer stored for a retry to replay).
                log.info("settle_committed_after_all", hold_id=call.held.hold_id)
                return
            session.add(
                UnbilledUsage(
                    **call.columns(now),
                    error=fitted(f"{type(error).__name__}: {error}", UnbilledUsage.error),
                )
            )
    except Exception:
        # The database refuses even this: the log line above keeps the usage, and the expiry
        # job releases the hold.
        log.exception("unbilled_usage_not_recorded", hold_id=call.held.hold_id)


def _pay_at_once(
    session: DbSession, settled: Settled, *, context: ledger.AuditContext, now: datetime
) -> Settled:
    assert settled.compensation is not None
    try:
        with write_transaction(session):
            compensations.pay(
                session, compensation_id=settled.compensation.id, context=context, now=now
            )
            balance = ledger.balance(session, account_id=settled.compensation.account_id, now=now)
    except Exception:
        log.exception("compensation_deferred", compensation_id=settled.compensation.id)
        return settled
    return replace(settled, balance=balance)


def unbilled_calls() -> Select[UnbilledUsage]:
    """Provider calls whose settle failed: voided, nothing charged, kept to be explained."""
    return select(UnbilledUsage)


# Streamed calls


@dataclass(frozen=True)
class Delta:
    """A piece of the reply, as the provider sent it."""

    text: str


@dataclass(frozen=True)
class Silence:
    """The provider has sent nothing for a while (the transport may send a keep-alive)."""


@dataclass(frozen=True)
class Finished(Generic[T]):
    """The end of a stream: the call as charged, and the failure that ended it: the
    provider's mid-stream, or the settle's (`charged` is None when nothing was charged and
    nothing kept: the provider failed before delivering anything, or the settle failed)."""

    charged: Charged[T] | None
    failure: CreditAppError | None


StreamEvent = Delta | Silence | Finished[T]


@dataclass(frozen=True)
class Streaming(Generic[H, T]):
    """A call whose reply streams: its hold, what `on_held` stored with it, then `events`
    (iterate them to the end, or close them: a closed stream is charged for what it
    delivered)."""

    held: Held
    started: H
    events: Iterator[StreamEvent[T]]


_END = object()


def _pieces(reply: ReplyStream, silence: float, duration: Histogram) -> Iterator[str | None]:
    """The reply's pieces, read in a thread of its own, and None each time the provider stays
    silent for `silence` seconds. The provider's failure is raised here. The reader observes
    the provider's `duration`: its time to the last piece, not the client's to read them."""
    pending: queue.Queue[object] = queue.Queue()

    def read() -> None:
        try:
            with duration.time():
                for piece in reply:
                    pending.put(piece)
            pending.put(_END)
        except BaseException as error:  # handed to the reader, or dropped once it is gone
            pending.put(error)

    threading.Thread(target=read, name="provider-stream", daemon=True).start()
    while True:
        try:
            item = pending.get(timeout=silence)
        except queue.Empty:
            yield None
            continue
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield str(item)


@dataclass(frozen=True)
class _StreamedCall(Generic[T]):
    """What a streamed call's end needs: how to settle it, and how to undo it when nothing
    is charged."""

    priced: _Priced
    held: Held
    on_settled: Callable[[DbSession, Settled], T]
    before_settle: BeforeSettle
    undo_started: Undo
    release: Callable[[Undo], None]
    meter: Meter
    context: ledger.AuditContext

    def drop(self) -> None:
        """Undo a call that got nothing from the provider: void its hold and remove what the
        caller stored with it, in the transaction that frees its Idempotency-Key."""
        MESSAGES.labels(self.priced.provider, self.priced.model, "provider_error").inc()

        def undo(session: DbSession) -> None:
            # The session `release` gives: the undo may run in another, once the database is back.
            ledger.void(
                session, hold_id=self.held.hold_id, context=self.context, now=self.meter.clock()
            )
            self.undo_started(session)

        self.release(undo)

    def forget(self) -> None:
        """Remove what the caller stored with a call whose settle failed, in the transaction
        that frees its Idempotency-Key (its hold is `_finish`'s, as for a whole reply)."""
        self.release(self.undo_started)


def stream(
    session: DbSession,
    metered: MeteredCall,
    *,
    meter: Meter,
    context: ledger.AuditContext,
    on_held: Callable[[DbSession, Held], H],
    on_settled: Callable[[DbSession, Settled, H], T],
    discard: Callable[[H], Undo],
    release: Callable[[Undo], None],
    before_hold: BeforeHold = _nothing_before,
    before_settle: BeforeSettle = _nothing_before_settle,
) -> Streaming[H, T]:
    """Call the provider for the request and stream the reply. What can fail before the provider
    answers raises here, as in `complete` (nothing is charged, nothing kept; `before_hold` and
    `before_settle` as there). `on_held(session, held)` runs in the hold's transaction (chat
    stores the user message there, so that the stream can name it); `discard(started)` is the
    undo of what it stored, run when nothing is charged. `release(undo)` frees the caller's
    claim and runs `undo` in the same transaction; while the database is unreachable it keeps
    trying in the background. No transaction is open while the reply flows.

    At the end, however it comes, one transaction settles what was delivered and runs
    `on_settled(session, settled, started)` (`settled.ending` says how the stream ended,
    `settled.failure` names a provider that cut it short):
    - the reply came whole: charged as the provider reported (estimated when it did not);
    - the client closed the stream, or the provider failed after delivering part of it: the
      input plus the output delivered (the provider's counts when larger), never above the hold;
    - the provider failed before delivering anything: the hold is voided and what `on_held`
      stored removed, in `release`'s transaction, as when `complete` fails;
    - the settle failed: the call is kept as unbilled and its hold voided (`_finish`), and what
      `on_held` stored removed in `release`'s transaction, as when `complete`'s settle fails.
    """
    asked_at = meter.clock()
    priced = _price(session, metered, now=asked_at)

    def place() -> tuple[Callable[[], None], Held, H]:
        with _refusal_announced(session, now=asked_at), write_transaction(session):
            hold_committed = before_hold(session)
            held = _hold(session, priced, meter=meter, context=context, now=asked_at)
            return hold_committed, held, on_held(session, held)

    hold_committed, held, started = _placed(
        session, metered, priced, place, context=context, now=asked_at
    )
    hold_committed()
    # Taken now, from what the hold's transaction stored: an undo may run in another session.
    streamed = _StreamedCall(
        priced,
        held,
        on_settled=lambda session, settled: on_settled(session, settled, started),
        before_settle=before_settle,
        undo_started=discard(started),
        release=release,
        meter=meter,
        context=context,
    )
    try:
        reply = meter.providers.get(priced.provider).stream(priced.request)
    except ProviderError as error:
        streamed.drop()
        raise _provider_failed(error) from error
    except BaseException:
        streamed.drop()
        raise
    events = _relay(session, reply, streamed)
    next(events)  # started: closing it from now on, even before its first event, settles
    return Streaming(held, started, events)


def _relay(
    session: DbSession, reply: ReplyStream, streamed: _StreamedCall[T]
) -> Iterator[StreamEvent[T]]:
    priced = streamed.priced
    meter = streamed.meter
    delivered: list[str] = []
    # The stream's end, settled once: by this generator, or by its deadline's timer while the
    # generator waits on its client. A piece is delivered only while the stream has not ended.
    ending = threading.Lock()
    ended: list[Finished[T]] = []

    def finish(session: DbSession, how: str, failure: CreditAppError | None = None) -> Finished[T]:
        with ending:
            if not ended:
                ended.append(settle(session, how, failure))
            return ended[0]

    def settle(session: DbSession, how: str, failure: CreditAppError | None) -> Finished[T]:
        reply.close()
        text = "".join(delivered)
        if isinstance(failure, ProviderFailed):
            if not text:
                streamed.drop()
                return Finished(None, failure)
            failure = ProviderFailed(failure.message_after_words, details=failure.details)
        usage = _streamed_usage(reply.usage, priced.request, text, whole=how == "completed")
        call = _AnsweredCall(
            priced=priced,
            held=streamed.held,
            completion=Completion(text, usage),
            usage=usage,
            cost=book.cost(priced.price, usage),
            ending=how,
            failure=failure,
        )
        try:
            charged = _finish(
                session,
                call,
                on_settled=streamed.on_settled,
                before_settle=streamed.before_settle,
                meter=meter,
                context=streamed.context,
            )
        except Exception:
            # Kept as unbilled, its hold voided (`_finish`): nothing is charged, so nothing of
            # it is kept either, as when a whole reply's settle fails.
            streamed.forget()
            return Finished(
                None,
                DependencyUnavailable(
                    "The charge could not be confirmed: send the request again with the same"
                    " Idempotency-Key to learn how it ended."
                ),
            )
        return Finished(charged, failure)

    def at_deadline() -> None:
        if ended:
            return
        try:
            meter.in_own_session(lambda own: finish(own, "timed_out", StreamTimedOut()))
        except Exception:  # a thread of its own: said here, or nowhere
            log.exception("stream_deadline_failed", hold_id=streamed.held.hold_id)

    left = streamed.held.at + meter.stream_deadline - meter.clock()
    # In a copy of this context: its log lines carry the request's id, as the request's do.
    deadline = threading.Timer(
        max(left.total_seconds(), 0), contextvars.copy_context().run, args=(at_deadline,)
    )
    deadline.daemon = True
    try:
        deadline.start()
        yield Silence()  # taken by `stream`, to start the generator
        duration = PROVIDER_DURATION.labels(priced.provider, priced.model)
        for piece in _pieces(reply, meter.silence, duration):
            with ending:
                if ended:
                    break
                if piece is not None:
                    delivered.append(piece)
            yield Silence() if piece is None else Delta(piece)
    except Exception as error:
        with ending:
            cut = ended[0] if ended else None
        if cut is not None:  # the deadline's settle closed the provider's stream under its reader
            finished = cut
        elif isinstance(error, ProviderError):
            finished = finish(session, "provider_failed", _provider_failed(error))
        else:  # the server failed
            finish(session, "client_closed")
            raise
    except BaseException:  # the client went away (GeneratorExit)
        finish(session, "client_closed")
        raise
    else:
        finished = finish(session, "completed")
    finally:
        deadline.cancel()
    yield finished


def _streamed_usage(
    reported: Usage | None, request: ChatRequest, text: str, *, whole: bool
) -> Usage:
    """The usage to charge for a stream. Whole: the provider's report, or an estimate. Cut
    short: the input, and the output delivered, estimated from its text (at most max_tokens)
    unless the provider counted more."""
    if whole:
        return _usage_of(Completion(text, reported), request)
    delivered = min(estimate_tokens([text]) if text else 0, request.max_tokens)
    if reported is None:
        prompt = [request.system_prompt, *(m.content for m in request.messages)]
        return Usage(input_tokens=estimate_tokens(prompt), output_tokens=delivered, estimated=True)
    reported = _reported(reported, request)
    return Usage(
        input_tokens=reported.input_tokens,
        cached_tokens=reported.cached_tokens,
        cache_write_tokens=reported.cache_write_tokens,
        output_tokens=max(reported.output_tokens, delivered),
        reasoning_tokens=reported.reasoning_tokens,
        estimated=delivered > reported.output_tokens,
    )
