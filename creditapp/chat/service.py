"""Chat: characters, conversations, and sending a message, where credits are spent.

Sending a message is three steps, and no database transaction or lock is open during the
provider call in the middle:
1. check the tier allows the model, find the price in force and hold the worst case
   (`insufficient_credits` here means no provider call);
2. call the provider;
3. in one transaction, price the normalized usage, settle the hold, store both messages and the
   usage record, and complete the request's Idempotency-Key claim with the response the caller
   builds from the exchange (so the response to replay commits with the charge, or neither does).
A provider failure voids the hold and charges nothing. A reply that is empty although the
provider billed for it is charged as the provider reported and refunded at once by a
compensation (or by the retry job, when paying at once fails).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Select, delete, or_, select

from creditapp import idempotency, ledger
from creditapp.auth.models import Tier, User
from creditapp.billing import compensations
from creditapp.billing.models import Compensation, UnbilledUsage, UsageRecord
from creditapp.chat.models import Character, Conversation, Message
from creditapp.database import DbSession, write_transaction
from creditapp.errors import (
    CreditAppError,
    DependencyUnavailable,
    InsufficientCredits,
    ModelNotAllowed,
    NotFound,
    ProviderFailed,
    ValidationFailed,
)
from creditapp.ledger.models import Account
from creditapp.metering.estimate import estimate_tokens, upper_bound_tokens
from creditapp.metering.providers import (
    PROVIDER_NAMES,
    ChatMessage,
    ChatRequest,
    Completion,
    ProviderError,
    Providers,
    ReplyStream,
)
from creditapp.metering.usage import Usage
from creditapp.metrics import CREDITS_CHARGED, MESSAGES, PROVIDER_DURATION
from creditapp.pricing import book
from creditapp.pricing.models import Price
from creditapp.stored_text import fitted

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def model_allowed(allowed_models: list[str], provider: str, model: str) -> bool:
    """`allowed_models` holds "provider:model", "provider:*" or "*"."""
    return bool({"*", f"{provider}:*", f"{provider}:{model}"} & set(allowed_models))


# Characters


def visible_characters(user: User) -> Select[tuple[Character]]:
    return select(Character).where(or_(Character.public.is_(True), Character.owner_id == user.id))


def get_character(session: DbSession, *, user: User, character_id: int) -> Character:
    character = session.get(Character, character_id)
    if character is None or not (character.public or character.owner_id == user.id):
        raise NotFound("No such character.")
    return character


def create_character(
    session: DbSession,
    *,
    owner: User,
    name: str,
    system_prompt: str,
    provider: str,
    model: str,
    public: bool,
    now: datetime,
) -> Character:
    if public and not owner.is_admin:
        raise ValidationFailed(details={"public": ["Only admins may create public characters."]})
    if provider not in PROVIDER_NAMES:
        raise ValidationFailed(
            details={"provider": [f"Must be one of {', '.join(PROVIDER_NAMES)}."]}
        )
    book.price_in_force(session, provider=provider, model=model, at=now)
    character = Character(
        owner_id=owner.id,
        name=name,
        system_prompt=system_prompt,
        provider=provider,
        model=model,
        public=public,
        created_at=now,
    )
    session.add(character)
    session.flush()
    return character


# Conversations


def create_conversation(
    session: DbSession, *, user: User, character_id: int, now: datetime
) -> Conversation:
    character = get_character(session, user=user, character_id=character_id)
    conversation = Conversation(user_id=user.id, character_id=character.id, created_at=now)
    session.add(conversation)
    session.flush()
    return conversation


def get_conversation(session: DbSession, *, user: User, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.user_id != user.id:
        raise NotFound("No such conversation.")
    return conversation


def user_conversations(user: User) -> Select[Conversation]:
    return select(Conversation).where(Conversation.user_id == user.id)


def conversation_messages(conversation: Conversation) -> Select[Message]:
    return select(Message).where(Message.conversation_id == conversation.id)


def refund_message(
    session: DbSession,
    *,
    message_id: int,
    reason: str,
    context: ledger.AuditContext,
    now: datetime,
) -> Compensation:
    """An admin's refund of the charge for a message (either message of the exchange)."""
    return compensations.refund_usage(
        session,
        usage_id=session.scalar(select(Message.usage_id).where(Message.id == message_id)),
        reason=f"refund of message {message_id}: {reason}",
        context=context,
        now=now,
    )


def unbilled_calls() -> Select[UnbilledUsage]:
    """Provider calls whose settle failed: voided, nothing charged, kept to be explained."""
    return select(UnbilledUsage)


# Messages


@dataclass(frozen=True)
class ChatSettings:
    hold_ttl: timedelta
    history_messages: int


@dataclass(frozen=True)
class Exchange:
    """The outcome of one message. `reply` is None when the provider gave no reply and the
    charge is being refunded by `compensation`."""

    message: Message
    reply: Message | None
    usage: Usage
    credits_charged: int
    balance: ledger.Balance
    compensation: Compensation | None


@dataclass(frozen=True)
class Sent:
    """A sent message: its exchange, and the response stored for its Idempotency-Key (built
    before a refund owed was paid, as a replay will show it)."""

    exchange: Exchange
    response: idempotency.StoredResponse


@dataclass(frozen=True)
class _Prepared:
    account_id: int
    conversation_id: int
    character: Character
    price: Price
    request: ChatRequest
    hold_amount: int


def _prepare(
    session: DbSession,
    *,
    user: User,
    conversation_id: int,
    content: str,
    max_tokens: int | None,
    settings: ChatSettings,
    now: datetime,
) -> _Prepared:
    # One round trip for what the message depends on (it is on every message's path).
    found = session.execute(
        select(Character, Tier, Account.id)
        .join(Conversation, Conversation.character_id == Character.id)
        .join(Tier, Tier.name == user.tier_name)
        .join(Account, Account.user_id == user.id)
        .where(Conversation.id == conversation_id, Conversation.user_id == user.id)
    ).one_or_none()
    if found is None:
        raise NotFound("No such conversation.")
    character, tier, account_id = found
    # A message refused here is counted with the model it was for.
    try:
        if not model_allowed(tier.allowed_models, character.provider, character.model):
            raise ModelNotAllowed(
                f"Your tier ({tier.name}) does not allow {character.provider}:{character.model}.",
                details={"tier": tier.name, "model": f"{character.provider}:{character.model}"},
            )
        if max_tokens is None:
            max_tokens = tier.default_max_tokens
        elif max_tokens > tier.max_max_tokens:
            raise ValidationFailed(
                details={
                    "max_tokens": [f"At most {tier.max_max_tokens} on your tier ({tier.name})."]
                }
            )
        price = book.price_in_force(
            session, provider=character.provider, model=character.model, at=now
        )
        history = session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.id.desc())
            .limit(settings.history_messages)
        ).all()
        earlier = [ChatMessage(m.role, m.content) for m in reversed(history)]
        messages = (*earlier, ChatMessage("user", content))
        request = ChatRequest(character.model, character.system_prompt, messages, max_tokens)
        input_bound = upper_bound_tokens([character.system_prompt, *(m.content for m in messages)])
        hold_amount = book.worst_case(price, input_tokens=input_bound, max_output_tokens=max_tokens)
        return _Prepared(account_id, conversation_id, character, price, request, hold_amount)
    except CreditAppError:
        MESSAGES.labels(character.provider, character.model, "refused").inc()
        raise


def _usage_of(completion: Completion, request: ChatRequest) -> Usage:
    if completion.usage is not None:
        return completion.usage
    prompt = [request.system_prompt, *(m.content for m in request.messages)]
    return Usage(
        input_tokens=estimate_tokens(prompt),
        output_tokens=estimate_tokens([completion.text]) if completion.text else 0,
        estimated=True,
    )


def send_message(
    session: DbSession,
    *,
    user: User,
    conversation_id: int,
    content: str,
    max_tokens: int | None,
    providers: Providers,
    settings: ChatSettings,
    context: ledger.AuditContext,
    clock: Clock,
    claim: idempotency.Claim,
    respond: Callable[[Exchange], idempotency.StoredResponse],
) -> Sent:
    """Send `content` to the conversation's character and charge exactly what the call cost.

    `respond` builds the request's response from the exchange, inside the settle transaction;
    it is stored under `claim` in that transaction and returned with the exchange.
    """
    asked_at = clock()
    prepared = _prepare(
        session,
        user=user,
        conversation_id=conversation_id,
        content=content,
        max_tokens=max_tokens,
        settings=settings,
        now=asked_at,
    )
    provider, model = prepared.character.provider, prepared.character.model
    with write_transaction(session):
        held = _hold(session, prepared, settings=settings, context=context, now=asked_at)

    try:
        with PROVIDER_DURATION.labels(provider, model).time():
            completion = providers.get(provider).complete(prepared.request)
        usage = _usage_of(completion, prepared.request)
    except ProviderError as error:
        MESSAGES.labels(provider, model, "provider_error").inc()
        log.warning(
            "provider_failed", provider=error.provider, reason=error.reason, status=error.status
        )
        with write_transaction(session):
            ledger.void(session, hold_id=held.hold_id, context=context, now=clock())
        raise ProviderFailed(
            details={"provider": error.provider, "reason": error.reason}
        ) from error
    except BaseException:
        # Anything else: release the hold before the error propagates (the expiry job would).
        with write_transaction(session):
            ledger.void(session, hold_id=held.hold_id, context=context, now=clock())
        raise

    call = _AnsweredCall(
        user_id=user.id,
        conversation_id=conversation_id,
        prepared=prepared,
        hold_id=held.hold_id,
        completion=completion,
        usage=usage,
        cost=book.cost(prepared.price, usage),
    )
    message = Message(
        conversation_id=conversation_id, role="user", content=content, created_at=asked_at
    )
    exchange, response = _finish(
        session, call, message, claim=claim, respond=respond, context=context, clock=clock
    )
    return Sent(exchange, response)


def _hold(
    session: DbSession,
    prepared: _Prepared,
    *,
    settings: ChatSettings,
    context: ledger.AuditContext,
    now: datetime,
) -> ledger.HoldResult:
    """Reserve the message's worst case (inside the caller's transaction)."""
    try:
        return ledger.hold(
            session,
            account_id=prepared.account_id,
            amount=prepared.hold_amount,
            ttl=settings.hold_ttl,
            context=context,
            now=now,
            reference=f"conversation:{prepared.conversation_id}",
        )
    except InsufficientCredits:
        MESSAGES.labels(
            prepared.character.provider, prepared.character.model, "insufficient_credits"
        ).inc()
        raise


# The `outcome` label of a charged message, by how its call ended.
_OUTCOMES = {
    "completed": "charged",
    "client_closed": "client_closed",
    "provider_failed": "provider_error",
}


def _finish(
    session: DbSession,
    call: _AnsweredCall,
    message: Message,
    *,
    claim: idempotency.Claim,
    respond: Callable[[Exchange], idempotency.StoredResponse],
    context: ledger.AuditContext,
    clock: Clock,
) -> tuple[Exchange, idempotency.StoredResponse]:
    """Settle an answered call and complete its claim with the response, in one transaction;
    then count it, and pay at once a refund it is owed."""
    provider, model = call.prepared.character.provider, call.prepared.character.model
    try:
        with write_transaction(session):
            exchange = _settle(session, call, message, context=context, now=clock())
            response = respond(exchange)
            idempotency.complete(session, claim, response=response)
    except BaseException as error:
        MESSAGES.labels(provider, model, "settle_failed").inc()
        _keep_unbilled(session, call, error=error, context=context, now=clock())
        raise
    outcome = _OUTCOMES[call.ending] if exchange.reply or call.ending != "completed" else "refunded"
    MESSAGES.labels(provider, model, outcome).inc()
    CREDITS_CHARGED.labels(provider, model).inc(exchange.credits_charged)
    if exchange.compensation is not None:
        exchange = _pay_at_once(session, exchange, context=context, now=clock())
    return exchange, response


@dataclass(frozen=True)
class _AnsweredCall:
    """A provider call that answered: what is settled, or kept as unbilled if that fails."""

    user_id: int
    conversation_id: int
    prepared: _Prepared
    hold_id: int
    completion: Completion
    usage: Usage
    cost: int
    ending: str = "completed"  # or how a stream ended early (CALL_ENDINGS)

    @property
    def to_charge(self) -> int:
        """What the settle asks for: the cost, except that a streamed reply that ended early or
        whose usage was estimated is never charged above its hold."""
        if self.ending == "completed" and not self.usage.estimated:
            return self.cost
        return min(self.cost, self.prepared.hold_amount)

    def columns(self, now: datetime) -> dict[str, Any]:
        """What a usage record and an unbilled call both say of it (`ProviderCall`)."""
        return {
            "user_id": self.user_id,
            "account_id": self.prepared.account_id,
            "conversation_id": self.conversation_id,
            "hold_id": self.hold_id,
            "price_id": self.prepared.price.id,
            "provider": self.prepared.character.provider,
            "model": self.prepared.character.model,
            **self.usage.counts(),
            "estimated": self.usage.estimated,
            "ending": self.ending,
            "cost": self.cost,
            "created_at": now,
        }


def _settle(
    session: DbSession,
    call: _AnsweredCall,
    message: Message,
    *,
    context: ledger.AuditContext,
    now: datetime,
) -> Exchange:
    """Charge the call and store its usage record and its messages (the user's `message`, new
    or stored when its stream began, and the reply) in the caller's transaction."""
    resolution = ledger.settle(
        session, hold_id=call.hold_id, actual=call.to_charge, context=context, now=now
    )
    record = UsageRecord(**call.columns(now), credits_charged=resolution.captured)
    session.add(record)
    session.flush()
    message.usage_id = record.id
    session.add(message)
    reply = None
    compensation = None
    if call.completion.text:
        reply = Message(
            conversation_id=call.conversation_id,
            role="assistant",
            content=call.completion.text,
            partial=call.ending != "completed",
            usage_id=record.id,
            created_at=now,
        )
        session.add(reply)
    elif call.ending == "completed" and record.credits_charged > 0:
        compensation = compensations.record(
            session,
            usage=record,
            reason="the provider returned no reply",
            requested_by="system",
            now=now,
        )
    session.flush()
    return Exchange(
        message=message,
        reply=reply,
        usage=call.usage,
        credits_charged=record.credits_charged,
        balance=ledger.balance(session, account_id=call.prepared.account_id, now=now),
        compensation=compensation,
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
    (nothing is charged to the user) and keep the usage as unbilled, in a transaction of its
    own, so that the call is neither lost nor left reserving credits until the expiry job."""
    log.error(
        "settle_failed",
        hold_id=call.hold_id,
        error=type(error).__name__,
        provider=call.prepared.character.provider,
        model=call.prepared.character.model,
        cost=call.cost,
        **call.usage.counts(),
    )
    try:
        with write_transaction(session):
            ledger.void(session, hold_id=call.hold_id, context=context, now=now)
            session.add(
                UnbilledUsage(
                    **call.columns(now),
                    error=fitted(f"{type(error).__name__}: {error}", UnbilledUsage.error),
                )
            )
    except Exception:
        # The database refuses even this: the log line above keeps the usage, and the expiry
        # job releases the hold.
        log.exception("unbilled_usage_not_recorded", hold_id=call.hold_id)


def _pay_at_once(
    session: DbSession, exchange: Exchange, *, context: ledger.AuditContext, now: datetime
) -> Exchange:
    assert exchange.compensation is not None
    try:
        with write_transaction(session):
            compensations.pay(
                session, compensation_id=exchange.compensation.id, context=context, now=now
            )
            balance = ledger.balance(session, account_id=exchange.compensation.account_id, now=now)
    except Exception:
        log.exception("compensation_deferred", compensation_id=exchange.compensation.id)
        return exchange
    return Exchange(
        exchange.message,
        None,
        exchange.usage,
        exchange.credits_charged,
        balance,
        exchange.compensation,
    )


# Streamed messages


@dataclass(frozen=True)
class Delta:
    """A piece of the reply, as the provider sent it."""

    text: str


@dataclass(frozen=True)
class Silence:
    """The provider has sent nothing for a while (the transport may send a keep-alive)."""


@dataclass(frozen=True)
class Finished:
    """The end of a stream: the exchange as charged, and the failure that ended it: the
    provider's mid-stream, or the settle's (`exchange` is None when nothing was charged and
    nothing kept: the provider failed before delivering anything, or the settle failed)."""

    exchange: Exchange | None
    failure: CreditAppError | None


StreamEvent = Delta | Silence | Finished


@dataclass(frozen=True)
class Streaming:
    """A message whose reply streams: the stored user message, then `events` (iterate them to
    the end, or close them: a closed stream is charged for what it delivered)."""

    message: Message
    events: Iterator[StreamEvent]


_END = object()


def _pieces(reply: ReplyStream, silence: float) -> Iterator[str | None]:
    """The reply's pieces, read in a thread of its own, and None each time the provider stays
    silent for `silence` seconds. The provider's failure is raised here."""
    pending: queue.Queue[object] = queue.Queue()

    def read() -> None:
        try:
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


def stream_message(
    session: DbSession,
    *,
    user: User,
    conversation_id: int,
    content: str,
    max_tokens: int | None,
    providers: Providers,
    settings: ChatSettings,
    context: ledger.AuditContext,
    clock: Clock,
    claim: idempotency.Claim,
    release: Callable[[idempotency.Undo], None],
    respond: Callable[[Exchange, CreditAppError | None], idempotency.StoredResponse],
    silence: float,
) -> Streaming:
    """Send `content` and stream the reply. What can fail before the provider answers raises
    here, as `send_message` does (nothing is charged, nothing kept). The user message is stored
    with the hold, so that the stream can name it; no transaction is open while the reply flows.
    `release(undo)` frees the claim and removes, in the same transaction, what the stream had
    committed; while the database is unreachable it keeps trying in the background.

    At the end, however it comes, one transaction settles what was delivered, stores the reply
    (flagged `partial` when cut short) and completes `claim` with `respond(exchange, failure)`:
    - the reply came whole: charged as the provider reported (estimated when it did not);
    - the client closed the stream, or the provider failed after delivering part of it: the
      input plus the output delivered (the provider's counts when larger), never above the hold;
    - the provider failed before delivering anything: the hold is voided, the user message
      removed and the claim released, as when `send_message` fails;
    - the settle failed: the call is kept as unbilled and its hold voided (`_finish`), the user
      message removed and the claim released, as when `send_message`'s settle fails.
    """
    asked_at = clock()
    prepared = _prepare(
        session,
        user=user,
        conversation_id=conversation_id,
        content=content,
        max_tokens=max_tokens,
        settings=settings,
        now=asked_at,
    )
    message = Message(
        conversation_id=conversation_id, role="user", content=content, created_at=asked_at
    )
    with write_transaction(session):
        held = _hold(session, prepared, settings=settings, context=context, now=asked_at)
        session.add(message)
    try:
        reply = providers.get(prepared.character.provider).stream(prepared.request)
    except ProviderError as error:
        _drop(prepared, held.hold_id, message, release, context=context, clock=clock)
        raise _provider_failed(error, prepared) from error
    except BaseException:
        _drop(prepared, held.hold_id, message, release, context=context, clock=clock)
        raise
    events = _relay(
        session,
        reply,
        prepared=prepared,
        hold_id=held.hold_id,
        message=message,
        user_id=user.id,
        claim=claim,
        release=release,
        respond=respond,
        context=context,
        clock=clock,
        silence=silence,
    )
    next(events)  # started: closing it from now on, even before its first event, settles
    return Streaming(message, events)


def _provider_failed(error: ProviderError, prepared: _Prepared) -> ProviderFailed:
    log.warning(
        "provider_failed", provider=error.provider, reason=error.reason, status=error.status
    )
    return ProviderFailed(details={"provider": error.provider, "reason": error.reason})


def _drop(
    prepared: _Prepared,
    hold_id: int,
    message: Message,
    release: Callable[[idempotency.Undo], None],
    *,
    context: ledger.AuditContext,
    clock: Clock,
) -> None:
    """Undo a streamed message that got nothing from the provider: void its hold and remove the
    user message, in the transaction that frees its Idempotency-Key."""
    MESSAGES.labels(prepared.character.provider, prepared.character.model, "provider_error").inc()
    message_id = message.id

    def undo(session: DbSession) -> None:
        ledger.void(session, hold_id=hold_id, context=context, now=clock())
        _remove_message(session, message_id)

    release(undo)


def _forget(message: Message, release: Callable[[idempotency.Undo], None]) -> None:
    """Remove the user message of a stream whose settle failed, in the transaction that frees
    its Idempotency-Key (its hold is `_finish`'s, as for a whole reply)."""
    message_id = message.id
    release(lambda session: _remove_message(session, message_id))


def _remove_message(session: DbSession, message_id: int) -> None:
    # By id, not through the ORM: the undo may run in another session, once the database is back.
    session.execute(delete(Message).where(Message.id == message_id))


def _relay(
    session: DbSession,
    reply: ReplyStream,
    *,
    prepared: _Prepared,
    hold_id: int,
    message: Message,
    user_id: int,
    claim: idempotency.Claim,
    release: Callable[[idempotency.Undo], None],
    respond: Callable[[Exchange, CreditAppError | None], idempotency.StoredResponse],
    context: ledger.AuditContext,
    clock: Clock,
    silence: float,
) -> Iterator[StreamEvent]:
    delivered: list[str] = []

    def finish(ending: str, failure: ProviderFailed | None = None) -> Finished:
        reply.close()
        text = "".join(delivered)
        if failure is not None and not text:
            _drop(prepared, hold_id, message, release, context=context, clock=clock)
            return Finished(None, failure)
        usage = _streamed_usage(reply.usage, prepared.request, text, whole=ending == "completed")
        call = _AnsweredCall(
            user_id=user_id,
            conversation_id=prepared.conversation_id,
            prepared=prepared,
            hold_id=hold_id,
            completion=Completion(text, usage),
            usage=usage,
            cost=book.cost(prepared.price, usage),
            ending=ending,
        )
        try:
            exchange, _response = _finish(
                session,
                call,
                message,
                claim=claim,
                respond=lambda exchange: respond(exchange, failure),
                context=context,
                clock=clock,
            )
        except Exception:
            # Kept as unbilled, its hold voided (`_finish`): nothing is charged, so nothing of
            # it is kept either, as when a whole reply's settle fails.
            _forget(message, release)
            return Finished(None, DependencyUnavailable("The charge could not be recorded."))
        return Finished(exchange, failure)

    try:
        yield Silence()  # taken by stream_message, to start the generator
        with PROVIDER_DURATION.labels(prepared.character.provider, prepared.character.model).time():
            for piece in _pieces(reply, silence):
                if piece is None:
                    yield Silence()
                    continue
                delivered.append(piece)
                yield Delta(piece)
    except ProviderError as error:
        finished = finish("provider_failed", _provider_failed(error, prepared))
    except BaseException:  # the client went away (GeneratorExit), or the server failed
        finish("client_closed")
        raise
    else:
        finished = finish("completed")
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
    return Usage(
        input_tokens=reported.input_tokens,
        cached_tokens=reported.cached_tokens,
        cache_write_tokens=reported.cache_write_tokens,
        output_tokens=max(reported.output_tokens, delivered),
        reasoning_tokens=reported.reasoning_tokens,
        estimated=delivered > reported.output_tokens,
    )
