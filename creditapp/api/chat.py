"""Characters, conversations and messages: where credits are spent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Response, current_app, jsonify
from marshmallow import Schema, fields, validate

from creditapp import idempotency
from creditapp.accounts import payer
from creditapp.api import limits
from creditapp.api.errors import error_body, from_error
from creditapp.api.idempotency import from_store, idempotent, to_store
from creditapp.api.identity import audit_context, authenticated, caller
from creditapp.api.metered import EVENT_STREAM, KEEP_ALIVE, event_stream, meter
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import (
    AmountsSchema,
    Credits,
    Flag,
    Id,
    PageArgs,
    Text,
    UtcDateTime,
    page_of,
    token_counts,
)
from creditapp.billing import call as metered_call
from creditapp.chat import service
from creditapp.chat.models import Character, Conversation, Message
from creditapp.database import DbSession
from creditapp.errors import CreditAppError, ProviderFailed, StreamClosedEarly
from creditapp.extensions import db
from creditapp.metering.providers import PROVIDER_NAMES
from creditapp.money import format_credits

# What a message keeps in its settle transaction: chat's exchange and the stored response.
Kept = tuple[service.Exchange, idempotency.StoredResponse]
# A message whose reply streams: its user message stored with the hold, then the reply's events.
Streaming = metered_call.Streaming[Message, Kept]

blp = Blueprint("chat", __name__, url_prefix="/api", description="Characters and conversations")

MAX_MESSAGE_CHARS = 16_000


class CharacterArgs(Schema):
    name = Text(required=True, max_length=100)
    system_prompt = Text(required=True, max_length=8000)
    provider = Text(required=True, max_length=32, validate=validate.OneOf(PROVIDER_NAMES))
    model = Text(required=True, max_length=200)
    public = Flag(load_default=False)


class CharacterSchema(Schema):
    id = Id()
    name = fields.String()
    system_prompt = fields.String()
    provider = fields.String()
    model = fields.String()
    public = fields.Boolean()
    owner_id = Id()
    created_at = UtcDateTime()


CharacterPageSchema = page_of(CharacterSchema)


class ConversationArgs(Schema):
    character_id = Id(required=True)


class ConversationSchema(Schema):
    id = Id()
    character_id = Id()
    created_at = UtcDateTime()


ConversationPageSchema = page_of(ConversationSchema)


class MessageArgs(Schema):
    content = Text(required=True, max_length=MAX_MESSAGE_CHARS)
    max_tokens = fields.Integer(
        load_default=None, strict=True, validate=validate.Range(min=1, max=1_000_000)
    )
    stream = Flag(
        load_default=False,
        metadata={"description": "Stream the reply as Server-Sent Events (200 text/event-stream)"},
    )
    team_id = Id(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "pay from this team's account (you must be a member), within your"
            " cap there"
        },
    )


class MessageSchema(Schema):
    id = Id()
    conversation_id = Id()
    role = fields.String()
    content = fields.String()
    # (`partial` is a Schema attribute of marshmallow's own.)
    is_partial = fields.Boolean(
        attribute="partial",
        data_key="partial",
        metadata={"description": "a streamed reply cut short: the part that was delivered"},
    )
    created_at = UtcDateTime()


MessagePageSchema = page_of(MessageSchema)


class UsageSchema(Schema):
    class Meta:
        include = {**token_counts(), "estimated": fields.Boolean()}


class ExchangeSchema(Schema):
    message = fields.Nested(MessageSchema)
    reply = fields.Nested(MessageSchema)
    usage = fields.Nested(UsageSchema)
    credits_charged = Credits()
    balance = fields.Nested(AmountsSchema)


@blp.route("/characters", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, CharacterPageSchema)
def characters(args: dict[str, Any]) -> Any:
    query = service.visible_characters(caller())
    return keyset_page(db.session, query, key=Character.id, args=args, position=lambda c: c.id)


@blp.route("/characters", methods=["POST"])
@authenticated()
@idempotent()
@blp.arguments(CharacterArgs)
@blp.response(201, CharacterSchema)
@answers(403)
def create_character(args: dict[str, Any]) -> Any:
    return service.create_character(
        db.session, owner=caller(), context=audit_context(), now=datetime.now(UTC), **args
    )


@blp.route("/characters/<character_id>", methods=["GET"])
@authenticated()
@blp.response(200, CharacterSchema)
def character(character_id: str) -> Any:
    return service.get_character(
        db.session, user=caller(), character_id=path_id(character_id, "character_id")
    )


@blp.route("/conversations", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, ConversationPageSchema)
def conversations(args: dict[str, Any]) -> Any:
    query = service.user_conversations(caller())
    return keyset_page(db.session, query, key=Conversation.id, args=args, position=lambda c: c.id)


@blp.route("/conversations", methods=["POST"])
@authenticated()
@idempotent()
@blp.arguments(ConversationArgs)
@blp.response(201, ConversationSchema)
@answers(404)
def create_conversation(args: dict[str, Any]) -> Any:
    return service.create_conversation(
        db.session, user=caller(), character_id=args["character_id"], now=datetime.now(UTC)
    )


@blp.route("/conversations/<conversation_id>", methods=["GET"])
@authenticated()
@blp.response(200, ConversationSchema)
def conversation(conversation_id: str) -> Any:
    return service.get_conversation(
        db.session, user=caller(), conversation_id=path_id(conversation_id, "conversation_id")
    )


@blp.route("/conversations/<conversation_id>/messages", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, MessagePageSchema)
def messages(args: dict[str, Any], conversation_id: str) -> Any:
    found = service.get_conversation(
        db.session, user=caller(), conversation_id=path_id(conversation_id, "conversation_id")
    )
    query = service.conversation_messages(found)
    return keyset_page(db.session, query, key=Message.id, args=args, position=lambda m: m.id)


def _no_reply(exchange: service.Exchange) -> ProviderFailed:
    """An empty reply the provider billed for: charged as billed and refunded, as it says."""
    details: dict[str, Any] = {"credits_charged": format_credits(exchange.credits_charged)}
    if exchange.compensation is not None:
        details["compensation_id"] = str(exchange.compensation.id)
    return ProviderFailed(
        "The AI provider returned no reply; its charge is refunded.", details=details
    )


# The bodies every message writes, by one schema instance each (marshmallow copies a schema's
# fields whenever it makes one).
_EXCHANGE, _MESSAGE, _AMOUNTS = ExchangeSchema(), MessageSchema(), AmountsSchema()


def _exchange_response(exchange: service.Exchange) -> Response:
    if exchange.reply is None:
        return from_error(_no_reply(exchange))  # the stored (replayed) answer says so too
    response = jsonify(_EXCHANGE.dump(exchange))
    response.status_code = 201
    return response


STREAM_DESCRIPTION = """With `"stream": true`: Server-Sent Events. `message` (the stored user
message), then `delta` (`{"text"}`) for each piece of the reply, and last `done` (the object
answered without streaming) or `error` (the error object, `credits_charged` for the part
delivered, `balance`; `stream_timed_out` at the stream's deadline, a tenth of the hold's life
before the hold expires). `: keep-alive` comments while the provider is silent."""


# OpenAPI 3.0 has no schema for an event stream: this is the schema of each event.
STREAM_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "delta", "done", "error"]},
        "data": {"type": "string", "description": "a JSON object, by event as described above"},
    },
}


@blp.route("/conversations/<conversation_id>/messages", methods=["POST"])
@limits.spending_operation
@authenticated()
@idempotent(required=True, runs_own_transactions=True, claims_with_first_write=True)
@blp.arguments(MessageArgs)
@blp.response(201, ExchangeSchema)
@blp.alt_response(
    200,
    success=True,
    schema=STREAM_EVENT,
    content_type="text/event-stream",
    description=STREAM_DESCRIPTION,
)
@answers(402, 403, 502)
def send_message(
    args: dict[str, Any],
    conversation_id: str,
    claim: idempotency.Asking,
    release: Callable[[idempotency.Undo], None],
) -> Any:
    user = caller()
    sending = service.message_call(
        db.session,
        user=user,
        conversation_id=path_id(conversation_id, "conversation_id"),
        content=args["content"],
        max_tokens=args["max_tokens"],
        history_messages=current_app.config["CHAT_HISTORY_MESSAGES"],
    )
    paying = payer(db.session, user.id, args["team_id"])
    metered = metered_call.MeteredCall(
        paying.account_id, user, sending.request, sending.origin, caps=paying.caps
    )

    def keep(
        session: DbSession,
        settled: metered_call.Settled,
        message: Message | None,
        render: Callable[[service.Exchange], idempotency.StoredResponse],
    ) -> Kept:
        """Store chat's exchange and complete the Idempotency-Key with its response: both
        commit with the charge, in the settle transaction."""
        exchange = service.store_exchange(session, sending, settled, message)
        stored = render(exchange)
        claim.complete(session, response=stored)
        return exchange, stored

    if args["stream"]:
        streaming = metered_call.stream(
            db.session,
            metered,
            meter=meter(),
            context=audit_context(),
            on_held=lambda session, held: service.store_message(session, sending, held),
            on_settled=lambda session, settled, message: keep(
                session,
                settled,
                message,
                lambda exchange: _stored_stream(exchange, settled),
            ),
            discard=service.unsend,
            release=release,
            before_hold=claim.take,
            before_settle=claim.lock,
        )
        return event_stream(_live_events(streaming))
    charged = metered_call.complete(
        db.session,
        metered,
        meter=meter(),
        context=audit_context(),
        on_settled=lambda session, settled: keep(
            session, settled, None, lambda exchange: to_store(_exchange_response(exchange))
        ),
        before_hold=claim.take,
        before_settle=claim.lock,
    )
    _exchange, stored = charged.kept
    return from_store(stored)


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _last_event(
    exchange: service.Exchange | None, failure: CreditAppError | None, ending: str = "completed"
) -> bytes:
    if failure is None and exchange is not None:
        if exchange.reply is not None:
            return _event("done", _EXCHANGE.dump(exchange))
        # No reply: the provider gave none (refunded), or the client closed the stream first.
        failure = StreamClosedEarly() if ending == "client_closed" else _no_reply(exchange)
    assert failure is not None
    charged = 0 if exchange is None else exchange.credits_charged
    data = {
        **error_body(failure.code, failure.message, failure.details),
        "credits_charged": format_credits(charged),
    }
    if exchange is not None:
        data["balance"] = _AMOUNTS.dump(exchange.balance)
    return _event("error", data)


def _live_events(streaming: Streaming) -> Iterator[bytes]:
    try:
        yield _event("message", _MESSAGE.dump(streaming.started))
        for event in streaming.events:
            if isinstance(event, metered_call.Delta):
                yield _event("delta", {"text": event.text})
            elif isinstance(event, metered_call.Silence):
                yield KEEP_ALIVE
            elif event.charged is None:
                yield _last_event(None, event.failure)
            else:
                # As charged in the end: after a refund owed was paid at once.
                exchange, _stored = event.charged.kept
                exchange = replace(exchange, settled=event.charged.settled)
                yield _last_event(exchange, event.failure)
    finally:
        # The client is gone when this closes early: the stream is charged for what it got.
        streaming.events.close()  # type: ignore[attr-defined]


def _stored_stream(
    exchange: service.Exchange, settled: metered_call.Settled
) -> idempotency.StoredResponse:
    """What a retry with the same Idempotency-Key replays: the stream in three events."""
    body = _event("message", _MESSAGE.dump(exchange.message))
    if exchange.reply is not None:
        body += _event("delta", {"text": exchange.reply.content})
    body += _last_event(exchange, settled.failure, settled.ending)
    return idempotency.StoredResponse(200, body, EVENT_STREAM)
