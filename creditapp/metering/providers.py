"""Provider adapters behind one small interface: send a chat, get the reply and its usage,
whole (`complete`) or as it is generated (`stream`).

`openai` (Chat Completions), `anthropic` (Messages) and `google` (Gemini generate_content) use
the official SDKs, configured from the environment, and their streaming APIs; `demo` answers
offline, deterministically, with realistic usage (streamed word by word). Each adapter turns
every way its SDK can fail into `ProviderError` (a stream that ends without its terminal event
included), and reads usage into `Usage` exactly as contract section 3 defines it, or None when
the provider reported none.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from creditapp.errors import InconsistentUsage
from creditapp.metering.estimate import estimate_tokens
from creditapp.metering.usage import Usage
from creditapp.text import made_storable

# Called through their official SDKs (and priced by the genai-prices catalogue).
SDK_PROVIDERS = ("openai", "anthropic", "google")
PROVIDER_NAMES = (*SDK_PROVIDERS, "demo")
# A body that is not JSON (nested too deep to read included), or not of the documented shape.
_UNREADABLE = (ValueError, KeyError, IndexError, AttributeError, TypeError, RecursionError)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Sampling:
    """How the reply is sampled, where the caller says (None, empty: the provider's default)."""

    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    model: str
    system_prompt: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Completion:
    """A whole reply. Its text is kept as both databases can store it (`made_storable`): a
    provider's answer is outside input, and the call is charged whatever it holds."""

    text: str
    usage: Usage | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", made_storable(self.text))


class ProviderError(Exception):
    """The provider failed: an error status, a timeout, no connection or an unreadable answer."""

    def __init__(self, provider: str, reason: str, *, status: int | None = None):
        self.provider = provider
        self.reason = reason
        self.status = status
        super().__init__(f"{provider}: {reason}" + (f" (HTTP {status})" if status else ""))


class _Ended:
    """What an adapter's items yield on the provider's terminal event (OpenAI's
    `finish_reason`, Anthropic's `message_stop`, Gemini's `finishReason`)."""


ENDED = _Ended()


class ReplyStream:
    """A reply as the provider generates it: iterating gives its text piece by piece; `usage`
    is the latest usage the provider reported (complete once the stream has ended). A stream
    whose items end without `ENDED` was cut short, however cleanly its body ended: that is a
    provider failure, raised after the last piece.

    `close`, from any thread, stops the reading: the thread that reads ends `items` (and with
    it the provider's stream) after its current piece, and `interrupt`, for an SDK whose stream
    may be closed from another thread, ends a read that is waiting at once."""

    def __init__(
        self,
        provider: str,
        items: Generator[str | Usage | _Ended],
        errors: tuple[type[Exception], ...],
        interrupt: Callable[[], None] | None = None,
    ):
        self.provider = provider
        self.usage: Usage | None = None
        self._items = items
        self._errors = errors
        self._interrupt = interrupt
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[str]:
        with _as_provider_errors(self.provider, self._errors):
            ended = False
            try:
                for item in self._items:
                    if self._stopped.is_set():
                        return
                    if isinstance(item, _Ended):
                        ended = True
                    elif isinstance(item, Usage):
                        self.usage = item
                    elif item:
                        yield made_storable(item)
            finally:
                self._items.close()
            if not ended:
                raise ProviderError(self.provider, "stream ended before its terminal event")

    def close(self) -> None:
        self._stopped.set()
        if self._interrupt is not None:
            self._interrupt()


class Provider(Protocol):
    name: str

    def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> ReplyStream: ...


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


def _given(**settings: Any) -> dict[str, Any]:
    """The settings the caller gave (a provider's default stands for the others)."""
    return {name: value for name, value in settings.items() if value is not None}


def _count(value: Any) -> int:
    """A token count as the provider gave it: none is 0, and anything but an integer is not a
    count (a string, a fraction, a boolean: the answer is unreadable, not rounded into one)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a token count that is not an integer")
    return value


# More tokens than any model reads or writes in one call: a provider's count above it is not a
# count (priced, even at the highest price a row may have, it would not fit an amount's column).
MOST_TOKENS = 10**9


def _usage(provider: str, **counts: int) -> Usage:
    try:
        if any(count > MOST_TOKENS for count in counts.values()):
            raise InconsistentUsage(f"a count above {MOST_TOKENS:,}: {counts}")
        return Usage(**counts)  # type: ignore[arg-type]
    except (TypeError, InconsistentUsage) as error:
        raise ProviderError(provider, f"inconsistent usage: {error}") from error


class OpenAIProvider:
    name = "openai"

    def __init__(self, connection: Connection):
        import httpx2
        import openai

        # httpx2: a stream cut short fails while it is read, outside the SDK's own errors.
        self._errors = (openai.OpenAIError, httpx2.HTTPError)
        self._http_response = httpx2.Response
        self._chunk_type = openai.types.chat.ChatCompletionChunk
        self._stream_type = openai.Stream[openai.types.chat.ChatCompletionChunk]
        self._client = openai.OpenAI(
            api_key=connection.api_key or "unset",
            base_url=connection.base_url,
            timeout=connection.timeout_seconds,
            max_retries=connection.max_retries,
        )

    @staticmethod
    def _body(request: ChatRequest) -> dict[str, Any]:
        messages = (
            [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
        )
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        sampling = request.sampling
        return {
            "model": request.model,
            "messages": messages,
            "max_completion_tokens": request.max_tokens,
            **_given(temperature=sampling.temperature, top_p=sampling.top_p),
            **({"stop": list(sampling.stop)} if sampling.stop else {}),
        }

    def complete(self, request: ChatRequest) -> Completion:
        with _as_provider_errors(self.name, self._errors):
            # The SDK's typed `chat.completions.create` checks every message against each
            # member of a union of message types: ~1 ms of CPU per 20 messages of history,
            # measured. Our body is plain JSON already, so it goes through the SDK's own
            # client (retries, timeouts, errors) without that step, and its answer is read as
            # the JSON it is, without the SDK's response models (~0.1 ms of CPU a call).
            response = self._client.post(
                "/chat/completions", body=self._body(request), cast_to=self._http_response
            )
            completion = response.json()
            text = completion["choices"][0]["message"]["content"]
            if text is None:  # no text: a refusal, say
                text = ""
            if not isinstance(text, str):
                raise TypeError("the reply's content is not text")
            usage = completion.get("usage")
            return Completion(text, None if usage is None else self._usage(usage))

    def stream(self, request: ChatRequest) -> ReplyStream:
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        with _as_provider_errors(self.name, self._errors):
            chunks = self._client.post(
                "/chat/completions",
                body=body,
                cast_to=self._chunk_type,
                stream=True,
                stream_cls=self._stream_type,
            )

        def items() -> Generator[str | Usage | _Ended]:
            # The usage chunk (with `include_usage`) follows the one with `finish_reason`.
            for chunk in chunks:
                for choice in chunk.choices:
                    yield choice.delta.content or ""
                    if choice.finish_reason is not None:
                        yield ENDED
                if chunk.usage is not None:
                    yield self._usage(chunk.usage.to_dict(warnings=False))

        return ReplyStream(self.name, items(), self._errors, interrupt=chunks.close)

    def _usage(self, usage: dict[str, Any]) -> Usage:
        """Chat Completions' `usage` object, as JSON."""
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return _usage(
            self.name,
            input_tokens=_count(usage.get("prompt_tokens")),
            cached_tokens=_count(prompt_details.get("cached_tokens")),
            cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
            output_tokens=_count(usage.get("completion_tokens")),
            reasoning_tokens=_count(completion_details.get("reasoning_tokens")),
        )


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, connection: Connection):
        import anthropic
        import httpx2

        self._errors = (anthropic.AnthropicError, httpx2.HTTPError)
        self._message_type = anthropic.types.Message
        self._stream_type = anthropic.Stream[anthropic.types.RawMessageStreamEvent]
        self._client = anthropic.Anthropic(
            api_key=connection.api_key or "unset",
            base_url=connection.base_url,
            timeout=connection.timeout_seconds,
            max_retries=connection.max_retries,
        )

    @staticmethod
    def _body(request: ChatRequest) -> dict[str, Any]:
        sampling = request.sampling
        return {
            "model": request.model,
            "max_tokens": request.max_tokens,
            **({"system": request.system_prompt} if request.system_prompt else {}),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            **_given(temperature=sampling.temperature, top_p=sampling.top_p),
            **({"stop_sequences": list(sampling.stop)} if sampling.stop else {}),
        }

    def complete(self, request: ChatRequest) -> Completion:
        with _as_provider_errors(self.name, self._errors):
            # Plain JSON through the SDK's client, as for OpenAI above.
            response = self._client.post(
                "/v1/messages", body=self._body(request), cast_to=self._message_type
            )
            text = "".join(block.text for block in response.content if block.type == "text")
            usage = response.usage
            return Completion(text, None if usage is None else self._usage(vars(usage)))

    def stream(self, request: ChatRequest) -> ReplyStream:
        with _as_provider_errors(self.name, self._errors):
            events = self._client.post(
                "/v1/messages",
                body={**self._body(request), "stream": True},
                cast_to=self._message_type,
                stream=True,
                stream_cls=self._stream_type,
            )

        def items() -> Generator[str | Usage | _Ended]:
            # `message_start` reports the input; each `message_delta` the counts so far, which
            # replace those of the start (the output count is cumulative).
            counts: dict[str, Any] = {}
            for event in events:
                if event.type == "message_start":
                    started = getattr(event.message, "usage", None)
                    counts = {} if started is None else vars(started)
                    if counts:
                        yield self._usage(counts)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    yield event.delta.text
                elif event.type == "message_delta" and getattr(event, "usage", None):
                    reported = vars(event.usage)
                    counts = {**counts, **{k: v for k, v in reported.items() if v is not None}}
                    yield self._usage(counts)
                elif event.type == "message_stop":
                    yield ENDED

        return ReplyStream(self.name, items(), self._errors, interrupt=events.close)

    def _usage(self, counts: dict[str, Any]) -> Usage:
        cache_read = _count(counts.get("cache_read_input_tokens"))
        cache_write = _count(counts.get("cache_creation_input_tokens"))
        details = counts.get("output_tokens_details")
        return _usage(
            self.name,
            input_tokens=_count(counts.get("input_tokens")) + cache_read + cache_write,
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_tokens=_count(counts.get("output_tokens")),
            reasoning_tokens=_count(details and details.thinking_tokens),
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

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        types = self._types
        contents = [
            types.Content(
                role="model" if m.role == "assistant" else "user",
                parts=[types.Part(text=m.content)],
            )
            for m in request.messages
        ]
        return {
            "model": request.model,
            "contents": contents,
            "config": types.GenerateContentConfig(
                system_instruction=request.system_prompt or None,
                max_output_tokens=request.max_tokens,
                temperature=request.sampling.temperature,
                top_p=request.sampling.top_p,
                stop_sequences=list(request.sampling.stop) or None,
                # One request a call: the SDK would otherwise resume a reply cut at the model's
                # per-request limit with more requests, each reading the prompt again, and add
                # their usage up (a prompt read twice priced at the long prompts' tier, and a
                # cost past the hold).
                automatic_continuation=False,
            ),
        }

    def complete(self, request: ChatRequest) -> Completion:
        with _as_provider_errors(self.name, self._errors):
            response = self._client.models.generate_content(**self._arguments(request))
            # The text of the first candidate, without its thought parts.
            text = response.text or ""
            return Completion(text, self._usage(response.usage_metadata))

    def stream(self, request: ChatRequest) -> ReplyStream:
        with _as_provider_errors(self.name, self._errors):
            chunks = self._client.models.generate_content_stream(**self._arguments(request))

        def items() -> Generator[str | Usage | _Ended]:
            # The SDK's stream is a generator: closing it closes the HTTP response, and only
            # the thread that reads it may (no `interrupt`: ReplyStream closes this in it).
            # It sends its request when first read (by the reader, after the stream began: a
            # refusal is the stream's error event, where the other SDKs' is a 502 before it),
            # and hands over nothing before the first words: reading it here would hold back
            # the stream, keep-alive comments included, for as long as the model thinks.
            try:
                for chunk in chunks:
                    yield chunk.text or ""
                    usage = self._usage(chunk.usage_metadata)  # on every chunk; last is whole
                    if usage is not None:
                        yield usage
                    # (The SDK clears a finishReason it continues past.)
                    if any(candidate.finish_reason for candidate in chunk.candidates or ()):
                        yield ENDED
            finally:
                chunks.close()  # type: ignore[attr-defined]

        return ReplyStream(self.name, items(), self._errors)

    def _usage(self, usage: Any) -> Usage | None:
        if usage is None or usage.prompt_token_count is None:
            return None
        thoughts = _count(usage.thoughts_token_count)
        return _usage(
            self.name,
            input_tokens=_count(usage.prompt_token_count)
            + _count(usage.tool_use_prompt_token_count),
            cached_tokens=_count(usage.cached_content_token_count),
            output_tokens=_count(usage.candidates_token_count) + thoughts,
            reasoning_tokens=thoughts,
        )


class DemoProvider:
    """Offline and deterministic: the same conversation always gets the same reply and usage.
    Streamed, the reply comes word by word, `WORD_SECONDS` apart (so streaming shows)."""

    name = "demo"
    WORD_SECONDS = 0.05

    def stream(self, request: ChatRequest) -> ReplyStream:
        completion = self.complete(request)

        def items() -> Generator[str | Usage | _Ended]:
            words = completion.text.split(" ")
            for index, word in enumerate(words):
                time.sleep(self.WORD_SECONDS)
                yield word if index == 0 else f" {word}"
            if completion.usage is not None:
                yield completion.usage
            yield ENDED

        return ReplyStream(self.name, items(), ())

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
