"""Provider adapters behind one small interface: send a chat, get the reply and its usage.

`openai` (Chat Completions), `anthropic` (Messages) and `google` (Gemini generate_content) use
the official SDKs, configured from the environment; `demo` answers offline, deterministically,
with realistic usage. Each adapter turns every way its SDK can fail into `ProviderError`, and
reads usage into `Usage` exactly as contract section 3 defines it, or None when the provider
reported none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from creditapp.errors import InconsistentUsage
from creditapp.metering.estimate import estimate_tokens
from creditapp.metering.usage import Usage

# Called through their official SDKs (and priced by the genai-prices catalogue).
SDK_PROVIDERS = ("openai", "anthropic", "google")
PROVIDER_NAMES = (*SDK_PROVIDERS, "demo")
_UNREADABLE = (ValueError, KeyError, IndexError, AttributeError, TypeError)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    system_prompt: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage | None


class ProviderError(Exception):
    """The provider failed: an error status, a timeout, no connection or an unreadable answer."""

    def __init__(self, provider: str, reason: str, *, status: int | None = None):
        self.provider = provider
        self.reason = reason
        self.status = status
        super().__init__(f"{provider}: {reason}" + (f" (HTTP {status})" if status else ""))


class Provider(Protocol):
    name: str

    def complete(self, request: ChatRequest) -> Completion: ...


@dataclass(frozen=True)
class Connection:
    base_url: str | None
    api_key: str | None
    timeout_seconds: float
    max_retries: int


@contextmanager
def _as_provider_errors(provider: str, sdk_errors: tuple[type[Exception], ...]) -> Iterator[None]:
    """Every way an SDK call can fail (its own errors, or a body not of the documented shape,
    bad JSON included) becomes a ProviderError."""
    try:
        yield
    except sdk_errors as error:
        raise ProviderError(provider, type(error).__name__, status=_status(error)) from error
    except _UNREADABLE as error:
        raise ProviderError(provider, "unreadable response") from error


def _count(value: Any) -> int:
    return int(value or 0)


def _usage(provider: str, **counts: int) -> Usage:
    try:
        return Usage(**counts)  # type: ignore[arg-type]
    except (TypeError, InconsistentUsage) as error:
        raise ProviderError(provider, f"inconsistent usage: {error}") from error


class OpenAIProvider:
    name = "openai"

    def __init__(self, connection: Connection):
        import openai

        self._errors = (openai.OpenAIError,)
        self._completion_type = openai.types.chat.ChatCompletion
        self._client = openai.OpenAI(
            api_key=connection.api_key or "unset",
            base_url=connection.base_url,
            timeout=connection.timeout_seconds,
            max_retries=connection.max_retries,
        )

    def complete(self, request: ChatRequest) -> Completion:
        messages = [{"role": "system", "content": request.system_prompt}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        body = {
            "model": request.model,
            "messages": messages,
            "max_completion_tokens": request.max_tokens,
        }
        with _as_provider_errors(self.name, self._errors):
            # The SDK's typed `chat.completions.create` checks every message against each
            # member of a union of message types: ~1 ms of CPU per 20 messages of history,
            # measured. Our body is plain JSON already, so it goes through the SDK's own
            # client (retries, timeouts, errors, parsing) without that step.
            response = self._client.post(
                "/chat/completions", body=body, cast_to=self._completion_type
            )
            text = response.choices[0].message.content or ""
        usage = response.usage
        if usage is None:
            return Completion(text, None)
        prompt_details = usage.prompt_tokens_details
        completion_details = usage.completion_tokens_details
        return Completion(
            text,
            _usage(
                self.name,
                input_tokens=_count(usage.prompt_tokens),
                cached_tokens=_count(prompt_details and prompt_details.cached_tokens),
                cache_write_tokens=_count(
                    prompt_details and getattr(prompt_details, "cache_write_tokens", None)
                ),
                output_tokens=_count(usage.completion_tokens),
                reasoning_tokens=_count(completion_details and completion_details.reasoning_tokens),
            ),
        )


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, connection: Connection):
        import anthropic

        self._errors = (anthropic.AnthropicError,)
        self._message_type = anthropic.types.Message
        self._client = anthropic.Anthropic(
            api_key=connection.api_key or "unset",
            base_url=connection.base_url,
            timeout=connection.timeout_seconds,
            max_retries=connection.max_retries,
        )

    def complete(self, request: ChatRequest) -> Completion:
        with _as_provider_errors(self.name, self._errors):
            # Plain JSON through the SDK's client, as for OpenAI above.
            response = self._client.post(
                "/v1/messages",
                body={
                    "model": request.model,
                    "max_tokens": request.max_tokens,
                    "system": request.system_prompt,
                    "messages": [{"role": m.role, "content": m.content} for m in request.messages],
                },
                cast_to=self._message_type,
            )
            text = "".join(block.text for block in response.content if block.type == "text")
        usage = response.usage
        if usage is None:
            return Completion(text, None)
        cache_read = _count(usage.cache_read_input_tokens)
        cache_write = _count(usage.cache_creation_input_tokens)
        details = getattr(usage, "output_tokens_details", None)
        return Completion(
            text,
            _usage(
                self.name,
                input_tokens=_count(usage.input_tokens) + cache_read + cache_write,
                cached_tokens=cache_read,
                cache_write_tokens=cache_write,
                output_tokens=_count(usage.output_tokens),
                reasoning_tokens=_count(details and details.thinking_tokens),
            ),
        )


class GoogleProvider:
    name = "google"

    def __init__(self, connection: Connection):
        import httpx2
        from google import genai
        from google.genai import errors, types

        self._types = types
        self._errors = (errors.APIError, httpx2.HTTPError)
        self._client = genai.Client(
            api_key=connection.api_key or "unset",
            http_options=types.HttpOptions(
                base_url=connection.base_url,
                timeout=int(connection.timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(attempts=connection.max_retries + 1),
            ),
        )

    def complete(self, request: ChatRequest) -> Completion:
        types = self._types
        contents = [
            types.Content(
                role="model" if m.role == "assistant" else "user",
                parts=[types.Part(text=m.content)],
            )
            for m in request.messages
        ]
        with _as_provider_errors(self.name, self._errors):
            response = self._client.models.generate_content(
                model=request.model,
                contents=contents,  # type: ignore[arg-type]
                config=types.GenerateContentConfig(
                    system_instruction=request.system_prompt,
                    max_output_tokens=request.max_tokens,
                ),
            )
            # The text of the first candidate, without its thought parts.
            text = response.text or ""
        usage = response.usage_metadata
        if usage is None or usage.prompt_token_count is None:
            return Completion(text, None)
        thoughts = _count(usage.thoughts_token_count)
        return Completion(
            text,
            _usage(
                self.name,
                input_tokens=_count(usage.prompt_token_count)
                + _count(usage.tool_use_prompt_token_count),
                cached_tokens=_count(usage.cached_content_token_count),
                output_tokens=_count(usage.candidates_token_count) + thoughts,
                reasoning_tokens=thoughts,
            ),
        )


class DemoProvider:
    """Offline and deterministic: the same conversation always gets the same reply and usage."""

    name = "demo"

    def complete(self, request: ChatRequest) -> Completion:
        last = request.messages[-1].content if request.messages else ""
        digest = hashlib.sha256(
            "\x00".join([request.model, request.system_prompt, last]).encode()
        ).hexdigest()
        openers = ("Interesting!", "Tell me more.", "I see.", "Good question.")
        text = f"{openers[int(digest[:2], 16) % len(openers)]} You said: {last[:200]}"
        # Realistic usage: what the estimator would count, and no more output than allowed.
        prompt = [request.system_prompt, *(m.content for m in request.messages)]
        output = min(estimate_tokens([text]), request.max_tokens)
        return Completion(text, Usage(input_tokens=estimate_tokens(prompt), output_tokens=output))


def _status(error: BaseException) -> int | None:
    for attribute in ("status_code", "code"):
        value = getattr(error, attribute, None)
        if isinstance(value, int):
            return value
    return None


_ADAPTERS: Mapping[str, Callable[[Connection], Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "google": GoogleProvider,
    "demo": lambda _connection: DemoProvider(),  # offline: nothing to connect to
}


class Providers:
    """One client per provider per process, made on first use (the SDK clients are thread-safe
    and keep their connection pools)."""

    def __init__(self, connections: Mapping[str, Connection]):
        self._connections = connections
        self._clients: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._clients:
            connection = self._connections.get(name) or Connection(None, None, 60, 0)
            self._clients[name] = _ADAPTERS[name](connection)
        return self._clients[name]
