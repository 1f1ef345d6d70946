"""The OpenAI-compatible gateway: a Chat Completions request as a metered call, and the call's
outcome as OpenAI's objects, so that any OpenAI client spends credits exactly.

A request names its model as `provider/model` (the price book's provider and model); its system
and developer messages become the system prompt, the others the conversation; a message's
content is a string or a list of text parts. The call is the metered call of every door
(`creditapp.billing.call`), paid from the key's account and held to the key's limit; what is
built here is only what OpenAI's wire format says of it: `chat.completion`, its stream of
`chat.completion.chunk` (whose last chunk always carries the usage), and `usage` with the
charge in `credits`.

A call's id is `gen-<hold id>`: known from the hold on, so that a stream names it in its first
chunk, and the id under which `GET /v1/generations/<id>` explains its charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from creditapp.auth import api_keys
from creditapp.auth.models import Tier, User
from creditapp.billing.call import MeteredRequest, Settled, model_allowed
from creditapp.database import DbSession
from creditapp.errors import ModelNotFound, ValidationFailed
from creditapp.metering.providers import PROVIDER_NAMES, ChatMessage, Sampling
from creditapp.money import format_credits
from creditapp.pricing import book
from creditapp.pricing.models import Price

GENERATION_PREFIX = "gen-"
# OpenAI's roles that become the system prompt, and those that are the conversation.
SYSTEM_ROLES = ("system", "developer")
CONVERSATION_ROLES = ("user", "assistant")


def generation_id(hold_id: int) -> str:
    return f"{GENERATION_PREFIX}{hold_id}"


def hold_of_generation(generation: str) -> int | None:
    """The hold id a generation id names, or None if it names none."""
    digits = generation.removeprefix(GENERATION_PREFIX)
    if generation == digits or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)


def provider_and_model(model_id: str) -> tuple[str, str]:
    """`provider/model` split; a provider this service does not call is ModelNotFound."""
    provider, slash, model = model_id.partition("/")
    if not slash or provider not in PROVIDER_NAMES or not model:
        raise ModelNotFound(
            f"The model {model_id!r} does not exist: name it as provider/model, where the "
            f"provider is one of {', '.join(PROVIDER_NAMES)}.",
            details={"model": model_id},
        )
    return provider, model


def callable_models(
    session: DbSession, *, caller: User, key_allowed: list[str] | None, at: datetime
) -> list[Price]:
    """The price rows in force of the models a key may call: those its owner's tier allows,
    and the key's own allow-list, if it has one (a model priced at zero cannot be called)."""
    tier = session.get(Tier, caller.tier_name)
    assert tier is not None  # users.tier_name is a foreign key
    return [
        price
        for price in session.scalars(book.all_in_force(at=at))
        if model_allowed(tier.allowed_models, price.provider, price.model)
        and api_keys.models_allowed(key_allowed, price.provider, price.model)
        and not book.charges_nothing(price)
    ]


def text_of(content: str | list[dict[str, Any]]) -> str:
    """A message's text: its string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


@dataclass(frozen=True)
class CompletionRequest:
    """A validated Chat Completions request (the HTTP layer checked its shape)."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    @property
    def output_limit(self) -> str:
        """The parameter that says how much output is allowed: OpenAI's newer name, where a
        client sends both (it wins)."""
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"

    def named_as_asked(self, refused: ValidationFailed) -> ValidationFailed:
        """A metered call's refusal, naming the output allowed as this request named it (the
        metered call knows it as `max_tokens` only)."""
        details = {
            self.output_limit if name == "max_tokens" else name: problem
            for name, problem in refused.details.items()
        }
        return ValidationFailed(refused.message, details=details)

    def _refused_by(self, provider: str, stop: tuple[str, ...]) -> dict[str, list[str]]:
        """What the provider refuses of the settings the others take (a 400 now, not a 502
        after a hold): Anthropic's temperature goes to 1 (OpenAI's and Gemini's to 2), and its
        stop sequences must have more than whitespace. (Its newest models also refuse
        temperature with top_p, which its older ones take: that is left to the model.)"""
        if provider != "anthropic":
            return {}
        refused = {}
        if (self.temperature or 0) > 1:
            refused["temperature"] = ["At most 1 for anthropic models."]
        if any(not sequence.strip() for sequence in stop):
            refused["stop"] = ["Anthropic refuses a stop sequence of only whitespace."]
        return refused

    def metered(self, *, max_credits: int | None) -> MeteredRequest:
        provider, model = provider_and_model(self.model)
        system = [text_of(m["content"]) for m in self.messages if m["role"] in SYSTEM_ROLES]
        conversation = tuple(
            ChatMessage(m["role"], text_of(m["content"]))
            for m in self.messages
            if m["role"] in CONVERSATION_ROLES
        )
        if not conversation:
            raise ValidationFailed(
                details={"messages": ["At least one user or assistant message is needed."]}
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        refused = self._refused_by(provider, stop)
        if refused:
            raise ValidationFailed(details=refused)
        return MeteredRequest(
            provider=provider,
            model=model,
            # A blank system message says nothing (and providers refuse an empty text).
            system_prompt="\n\n".join(text for text in system if text.strip()),
            messages=conversation,
            # OpenAI's newer name wins where a client sends both.
            max_tokens=self.max_completion_tokens or self.max_tokens,
            max_credits=max_credits,
            sampling=Sampling(self.temperature, self.top_p, stop),
        )


def usage_object(settled: Settled) -> dict[str, Any]:
    """OpenAI's `usage`, with the charge in `credits` (a decimal string, as every amount)."""
    usage = settled.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "credits": format_credits(settled.credits_charged),
        "estimated": usage.estimated,
    }


def no_reply(settled: Settled) -> bool:
    """The provider billed for an empty reply: the call is charged as billed and refunded at
    once, and answered as the provider's failure, not as a reply."""
    return not settled.text and settled.compensation is not None


def finish_reason(settled: Settled) -> str:
    """`length` when the reply used every token it was allowed, else `stop`."""
    return "length" if settled.usage.output_tokens >= settled.max_tokens else "stop"


@dataclass(frozen=True)
class Generation:
    """What every object of one call says of it: its id, model (as asked) and creation time."""

    id: str
    model: str
    created: int

    def completion(self, settled: Settled) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": settled.text},
                    "finish_reason": finish_reason(settled),
                }
            ],
            "usage": usage_object(settled),
        }

    def chunk(
        self,
        delta: dict[str, str] | None = None,
        *,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A `chat.completion.chunk`: a piece of the reply (`delta`), its end (`finish_reason`)
        or, with no choice at all, the usage."""
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if usage is not None
            else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def ending(self, settled: Settled) -> list[dict[str, Any]]:
        """The last chunks of a stream: how it finished (when the reply came whole), then the
        usage, always."""
        chunks = []
        if settled.failure is None and settled.ending == "completed" and not no_reply(settled):
            chunks.append(self.chunk(finish_reason=finish_reason(settled)))
        chunks.append(self.chunk(usage=usage_object(settled)))
        return chunks
