"""The OpenAI-compatible gateway (`/v1`): Chat Completions, the models a key may call, and the
receipt of a call, for any OpenAI client with an API key. Its failures have OpenAI's shape
(`openai_shape`), which OpenAI's SDKs turn into their typed exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import Flask, Response, g, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from marshmallow.exceptions import SCHEMA as WHOLE_BODY

from creditapp import accounts, gateway, idempotency
from creditapp.api import limits
from creditapp.api.credit import ReceiptSchema
from creditapp.api.errors import Failure, render_errors
from creditapp.api.idempotency import from_store, idempotent
from creditapp.api.identity import (
    GATEWAY_PREFIX,
    audit_context,
    caller,
    key_authenticated,
    request_api_key,
)
from creditapp.api.metered import EVENT_STREAM, KEEP_ALIVE, event_stream, meter
from creditapp.api.openapi import answers, declares
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Credits, Flag, Text
from creditapp.auth import api_keys
from creditapp.billing import call as metered_call
from creditapp.billing import receipts
from creditapp.database import DbSession
from creditapp.errors import (
    ModelNotAllowed,
    ModelNotFound,
    ModelNotPriced,
    NotFound,
    ProviderFailed,
    ValidationFailed,
)
from creditapp.extensions import db
from creditapp.money import AmountError, format_credits, parse_credits
from creditapp.text import BLANK, blank

blp = Blueprint(
    "gateway", __name__, url_prefix=GATEWAY_PREFIX, description="OpenAI-compatible gateway"
)

# Chat Completions' error types, by status (OpenAI's SDKs raise by status; clients read these).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_credits",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_shape(failure: Failure) -> Response:
    """OpenAI's error object: `{"error": {"message", "type", "param", "code", "request_id"}}`.
    A refused request names its first bad parameter in `param` and every one in `message`; a
    body that is not an object at all names none (marshmallow calls it `_schema`)."""
    message = failure.message
    param = None
    if failure.status == 400 and failure.details:
        named = [name for name in failure.details if name != WHOLE_BODY]
        param = named[0] if named else None
        message = f"{message} " + "; ".join(
            f"{name}: {_said(problem)}" if name != WHOLE_BODY else _said(problem)
            for name, problem in failure.details.items()
        )
    code = "invalid_api_key" if failure.status == 401 else failure.code
    response = jsonify(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(failure.status, "api_error"),
                "param": param,
                "code": code,
                "request_id": g.get("request_id"),
            }
        }
    )
    response.status_code = failure.status
    return response


def _said(problem: Any) -> str:
    """A field's problems as words (a list of messages, or a nested field's own)."""
    if isinstance(problem, list):
        return " ".join(_said(item) for item in problem)
    if isinstance(problem, dict):
        return "; ".join(f"{name}: {_said(item)}" for name, item in problem.items())
    return str(problem)


def register_gateway_errors(app: Flask) -> None:
    render_errors(app, openai_shape, blueprint=blp.name, url_prefix=GATEWAY_PREFIX)


class Sampled(fields.Field):
    """A sampling setting: a JSON number from `low` to `high` (no boolean, NaN, or number too
    long to be one), as a float: it goes to the provider, never into money."""

    def __init__(self, *, low: int, high: int, **kwargs: Any):
        kwargs.setdefault(
            "metadata", {"type": "number", "minimum": low, "maximum": high, "nullable": True}
        )
        super().__init__(allow_none=True, load_default=None, **kwargs)
        self.low, self.high = low, high

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        number = value
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise ValidationError("Must be a number.")
        if not Decimal(number).is_finite() or not self.low <= number <= self.high:
            raise ValidationError(f"Must be between {self.low} and {self.high}.")
        return float(number)


class Content(fields.Field):
    """A message's content: a string, or a list of text parts (`{"type": "text", "text"}`)."""

    MAX_CHARS = 64_000

    def __init__(self, **kwargs: Any):
        kwargs.setdefault(
            "metadata",
            {
                "description": "blank only in a system or developer message",
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {
                                "type": {"type": "string", "enum": ["text"]},
                                "text": {"type": "string"},
                            },
                        },
                    },
                ],
            },
        )
        super().__init__(required=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and all(
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
            and set(part) == {"type", "text"}
            for part in value
        ):
            texts = [part["text"] for part in value]
        else:
            raise ValidationError('A string, or a list of {"type": "text", "text": ...} parts.')
        if sum(len(text) for text in texts) > self.MAX_CHARS:
            raise ValidationError(f"At most {self.MAX_CHARS} characters.")
        if any(not _clean(text) for text in texts):
            raise ValidationError("Must not contain NUL characters or lone surrogates.")
        return value


def _clean(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


class ChatMessageArgs(Schema):
    role = fields.String(
        required=True,
        validate=validate.OneOf([*gateway.SYSTEM_ROLES, *gateway.CONVERSATION_ROLES]),
    )
    content = Content()
    name = Text(max_length=64, load_default=None)

    @validates_schema
    def said_something(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """A user's or assistant's message of no text is refused, as the chat endpoint refuses
        one (Anthropic and Gemini refuse an empty text: a 400 now, not a 502 after a hold); a
        blank system message says nothing, and is left out."""
        if data["role"] in gateway.CONVERSATION_ROLES and blank(gateway.text_of(data["content"])):
            raise ValidationError({"content": [BLANK]})


class StreamOptionsArgs(Schema):
    include_usage = Flag(
        load_default=True,
        metadata={"description": "the last chunk carries the usage whatever this says"},
    )


class CompletionArgs(Schema):
    model = Text(required=True, max_length=300, metadata={"example": "openai/gpt-4o-mini"})
    messages = fields.List(
        fields.Nested(ChatMessageArgs), required=True, validate=validate.Length(min=1, max=500)
    )
    max_tokens = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(min=1, max=1_000_000)
    )
    max_completion_tokens = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(min=1, max=1_000_000)
    )
    temperature = Sampled(low=0, high=2)
    top_p = Sampled(low=0, high=1)
    stop = fields.Raw(
        load_default=None,
        metadata={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    )
    stream = Flag(load_default=False)
    stream_options = fields.Nested(StreamOptionsArgs, load_default=None, allow_none=True)
    user = Text(max_length=256, load_default=None)


def _stop(value: Any) -> str | list[str] | None:
    """OpenAI's `stop`: a string or up to 4 strings (1-64 characters each)."""
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return None
    if not (
        isinstance(stops, list)
        and 1 <= len(stops) <= 4
        and all(isinstance(s, str) and 1 <= len(s) <= 64 and _clean(s) for s in stops)
    ):
        raise ValidationFailed(details={"stop": ["A string or a list of 1-4 strings."]})
    return value  # type: ignore[no-any-return]


MAX_CREDITS_HEADER = "X-Max-Credits"


def _max_credits() -> int | None:
    given = request.headers.get(MAX_CREDITS_HEADER)
    if given is None:
        return None
    try:
        return parse_credits(given)
    except AmountError as error:
        raise ValidationFailed(details={MAX_CREDITS_HEADER: [str(error)]}) from error


def _held_header(held: metered_call.Held) -> tuple[tuple[str, str], ...]:
    """What a stream says before its first byte (and its replay with it)."""
    return ((CREDIT_HEADERS[0], format_credits(held.amount)),)


def _credit_headers(settled: metered_call.Settled) -> tuple[tuple[str, str], ...]:
    amounts = (settled.held.amount, settled.credits_charged, settled.balance.available)
    return tuple(zip(CREDIT_HEADERS, map(format_credits, amounts), strict=True))


class CompletionMessageSchema(Schema):
    role = fields.String(metadata={"enum": ["assistant"]})
    content = fields.String()


class ChoiceSchema(Schema):
    index = fields.Integer()
    message = fields.Nested(CompletionMessageSchema)
    finish_reason = fields.String(metadata={"enum": ["stop", "length"]})


class PromptDetailsSchema(Schema):
    cached_tokens = fields.Integer()
    cache_write_tokens = fields.Integer()


class CompletionDetailsSchema(Schema):
    reasoning_tokens = fields.Integer()


class CompletionUsageSchema(Schema):
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()
    prompt_tokens_details = fields.Nested(PromptDetailsSchema)
    completion_tokens_details = fields.Nested(CompletionDetailsSchema)
    credits = Credits(metadata={"description": "the charge, as the ledger recorded it"})
    estimated = fields.Boolean()


class ChatCompletionSchema(Schema):
    id = fields.String(metadata={"description": "gen-<n>: GET /v1/generations/<id> explains it"})
    object = fields.String(metadata={"enum": ["chat.completion"]})
    created = fields.Integer()
    model = fields.String()
    choices = fields.List(fields.Nested(ChoiceSchema))
    usage = fields.Nested(CompletionUsageSchema)


CREDIT_HEADERS = ("X-Credits-Held", "X-Credits-Charged", "X-Credits-Available")

STREAM_DESCRIPTION = """With `"stream": true`: `data: <chat.completion.chunk>` lines, then
`data: [DONE]`. The last chunk before `[DONE]` always carries `usage` (with `credits`);
`X-Credits-Held` comes before the first byte. A provider failure after part of the reply ends
the stream with the usage of what was delivered, then `data: {"error": ...}`; so does the
stream's deadline (`stream_timed_out`), a tenth of the hold's life before the hold expires."""


@blp.route("/chat/completions", methods=["POST"])
@limits.spending_operation
@key_authenticated()
@idempotent(runs_own_transactions=True, claims_with_first_write=True)
@blp.arguments(CompletionArgs)
@blp.response(
    200,
    ChatCompletionSchema,
    description="OpenAI's chat.completion object, its usage with `credits`; or, with "
    "`stream`, its chunks as Server-Sent Events (text/event-stream).",
    headers={name: {"schema": {"type": "string"}} for name in CREDIT_HEADERS},
)
@declares(event_stream=STREAM_DESCRIPTION)
@answers(402, 403, 404, 502)
def chat_completions(
    args: dict[str, Any],
    claim: idempotency.Asking | None,
    release: Callable[[idempotency.Undo], None],
) -> Any:
    key = request_api_key()
    asked = gateway.CompletionRequest(
        model=args["model"],
        messages=args["messages"],
        max_tokens=args["max_tokens"],
        max_completion_tokens=args["max_completion_tokens"],
        temperature=args["temperature"],
        top_p=args["top_p"],
        stop=_stop(args["stop"]),
        stream=args["stream"],
    )
    metered_request = asked.metered(max_credits=_max_credits())
    provider, model = metered_request.provider, metered_request.model
    if not api_keys.models_allowed(key.allowed_models, provider, model):
        raise ModelNotAllowed(
            f"This API key does not allow {provider}/{model}.",
            details={"model": asked.model, "allowed_models": key.allowed_models},
        )
    paying = accounts.key_payer(db.session, key)
    metered = metered_call.MeteredCall(
        paying.account_id,
        caller(),
        metered_request,
        metered_call.Origin(reference=api_keys.hold_reference(key.id)),
        caps=paying.caps,
    )

    def generation(held: metered_call.Held) -> gateway.Generation:
        return gateway.Generation(
            gateway.generation_id(held.hold_id), asked.model, int(held.at.timestamp())
        )

    def keep(session: DbSession, stored: idempotency.StoredResponse) -> idempotency.StoredResponse:
        if claim is not None:
            claim.complete(session, response=stored)
        return stored

    claimed: dict[str, Any] = (
        {} if claim is None else {"before_hold": claim.take, "before_settle": claim.lock}
    )
    try:
        if asked.stream:
            streaming = metered_call.stream(
                db.session,
                metered,
                meter=meter(),
                context=audit_context(),
                on_held=lambda _session, held: generation(held),
                on_settled=lambda session, settled, made: keep(
                    session, _stored_stream(made, settled)
                ),
                discard=lambda _made: _nothing_stored,
                release=release,
                **claimed,
            )
            return event_stream(_chunks(streaming), dict(_held_header(streaming.held)))
        charged = metered_call.complete(
            db.session,
            metered,
            meter=meter(),
            context=audit_context(),
            on_settled=lambda session, settled: keep(
                session, _completion(generation(settled.held), settled)
            ),
            **claimed,
        )
    except ValidationFailed as refused:
        raise asked.named_as_asked(refused) from refused
    except ModelNotPriced as error:
        raise ModelNotFound(
            f"The model {asked.model!r} has no price in force: it cannot be called.",
            details={"model": asked.model},
        ) from error
    response = from_store(charged.kept)
    # As stored, but for the balance after a refund paid once the settle committed (an empty
    # reply's): a replay says the balance the settle left.
    response.headers.update(_credit_headers(charged.settled))
    return response


def _nothing_stored(_session: DbSession) -> None:
    """A gateway call stores nothing with its hold: there is nothing to undo."""


def _no_reply(settled: metered_call.Settled) -> ProviderFailed:
    """An empty reply the provider billed for: charged as billed and refunded at once."""
    return ProviderFailed(
        "The AI provider returned no reply; its charge of "
        f"{format_credits(settled.credits_charged)} credits is refunded."
    )


def _completion(
    made: gateway.Generation, settled: metered_call.Settled
) -> idempotency.StoredResponse:
    if gateway.no_reply(settled):
        failure = openai_shape(Failure.of(_no_reply(settled)))
        return idempotency.StoredResponse(
            failure.status_code, failure.get_data(), failure.content_type, _credit_headers(settled)
        )
    return idempotency.StoredResponse(
        200,
        json.dumps(made.completion(settled)).encode(),
        "application/json",
        _credit_headers(settled),
    )


DONE = b"data: [DONE]\n\n"


def _data(document: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n".encode()


def _error_data(failure: Failure) -> bytes:
    body: dict[str, Any] = json.loads(openai_shape(failure).get_data())
    return _data(body)


def _ending(made: gateway.Generation, settled: metered_call.Settled | None, failure: Any) -> bytes:
    """The end of a stream: the usage chunk (of what was delivered, when anything was charged),
    then `[DONE]`, or the failure's error object when the call failed."""
    body = b""
    if settled is not None:
        body += b"".join(_data(chunk) for chunk in made.ending(settled))
        if failure is None and gateway.no_reply(settled):
            failure = _no_reply(settled)
    if failure is not None:
        return body + _error_data(Failure.of(failure))
    return body + DONE


def _stored_stream(
    made: gateway.Generation, settled: metered_call.Settled
) -> idempotency.StoredResponse:
    """What a retry with the same Idempotency-Key replays: the stream in few chunks."""
    body = _data(made.chunk({"role": "assistant", "content": ""}))
    if settled.text:
        body += _data(made.chunk({"content": settled.text}))
    body += _ending(made, settled, settled.failure)
    return idempotency.StoredResponse(200, body, EVENT_STREAM, _held_header(settled.held))


def _chunks(
    streaming: metered_call.Streaming[gateway.Generation, idempotency.StoredResponse],
) -> Iterator[bytes]:
    made = streaming.started
    try:
        yield _data(made.chunk({"role": "assistant", "content": ""}))
        for event in streaming.events:
            if isinstance(event, metered_call.Delta):
                yield _data(made.chunk({"content": event.text}))
            elif isinstance(event, metered_call.Silence):
                yield KEEP_ALIVE
            else:
                settled = None if event.charged is None else event.charged.settled
                yield _ending(made, settled, event.failure)
    finally:
        # The client is gone when this closes early: the stream is charged for what it got.
        streaming.events.close()  # type: ignore[attr-defined]


class ModelPricingSchema(Schema):
    input = fields.String()
    output = fields.String()
    cached_input = fields.String(allow_none=True)
    cache_write = fields.String(allow_none=True)


class ModelSchema(Schema):
    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    owned_by = fields.String()
    pricing = fields.Nested(ModelPricingSchema)


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))


def _usd(rate: Decimal | None) -> str | None:
    return None if rate is None else format(rate.normalize(), "f")


@blp.route("/models", methods=["GET"])
@key_authenticated()
@blp.response(200, ModelListSchema)
def models() -> Any:
    """The priced models this key may call (its owner's tier and the key's own allow-list),
    with their prices in force, in USD per 1M tokens."""
    key = request_api_key()
    data = [
        {
            "id": f"{price.provider}/{price.model}",
            "object": "model",
            "created": int(price.effective_from.timestamp()),
            "owned_by": price.provider,
            "pricing": {
                "input": _usd(price.input),
                "output": _usd(price.output),
                "cached_input": _usd(price.cached_input),
                "cache_write": _usd(price.cache_write),
            },
        }
        for price in gateway.callable_models(
            db.session, caller=caller(), key_allowed=key.allowed_models, at=datetime.now(UTC)
        )
    ]
    return {"object": "list", "data": data}


class GenerationSchema(Schema):
    id = fields.String()
    object = fields.String()
    receipt = fields.Nested(ReceiptSchema)
    credits = Credits()


@blp.route("/generations/<generation_id>", methods=["GET"])
@key_authenticated()
@blp.response(200, GenerationSchema)
@answers(404)
def generation(generation_id: str) -> Any:
    """A call's receipt (as `GET /api/credit/transactions/<id>` explains a charge): its
    usage, price row, arithmetic, rounding, and what its hold released. The key's owner's
    calls only."""
    hold_id = gateway.hold_of_generation(generation_id)
    receipt = None
    if hold_id is not None:
        receipt = receipts.of_call(db.session, hold_id=hold_id, user_id=caller().id)
    if receipt is None:
        raise NotFound("No such generation.")
    return {
        "id": generation_id,
        "object": "generation",
        "receipt": receipt,
        "credits": receipt.charged,
    }
