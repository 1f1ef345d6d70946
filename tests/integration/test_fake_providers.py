"""The fake provider server speaks each provider's streaming format too (SSE, a word an event),
read here by the official SDKs' own stream parsers: the twin the streaming tests run against."""

from __future__ import annotations

import anthropic
import openai
from google import genai
from google.genai import types

from tests.fake_providers import PROVIDERS, Answer, FakeProviders

USAGE = {
    "openai": {"prompt_tokens": 12, "completion_tokens": 3},
    "anthropic": {"input_tokens": 12, "output_tokens": 3},
    "google": {"promptTokenCount": 12, "candidatesTokenCount": 3},
}


def test_openai_streams_chunks_and_usage(fake_providers: FakeProviders) -> None:
    urls = fake_providers.base_urls()
    fake_providers.script("openai", Answer(text="Streamed in words.", usage=USAGE["openai"]))
    client = openai.OpenAI(base_url=urls["OPENAI_BASE_URL"], api_key="k", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["Streamed", " in", " words."]
    # With `include_usage`, the usage comes alone in the last chunk, null in the others.
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 12
    assert fake_providers.calls("openai")[0]["body"]["stream"] is True


def test_anthropic_streams_events_and_usage(fake_providers: FakeProviders) -> None:
    urls = fake_providers.base_urls()
    fake_providers.script("anthropic", Answer(text="Streamed.", usage=USAGE["anthropic"]))
    client = anthropic.Anthropic(base_url=urls["ANTHROPIC_BASE_URL"], api_key="k", max_retries=0)
    with client.messages.stream(
        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert [block.text for block in message.content if block.type == "text"] == ["Streamed."]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 3)


def test_gemini_streams_candidates_and_usage(fake_providers: FakeProviders) -> None:
    urls = fake_providers.base_urls()
    fake_providers.script("google", Answer(text="Streamed.", usage=USAGE["google"]))
    client = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=urls["GOOGLE_GEMINI_BASE_URL"])
    )
    chunks = list(client.models.generate_content_stream(model="gemini-test", contents="Hi"))
    assert "".join(chunk.text or "" for chunk in chunks) == "Streamed."
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.prompt_token_count == 12


def test_an_unterminated_stream_ends_after_its_last_word_without_the_terminal_event(
    fake_providers: FakeProviders,
) -> None:
    """What a provider cut short looks like to each SDK: every word, then the end of the body
    without the event that says the reply is complete, and no error from the SDK."""
    urls = fake_providers.base_urls()
    for provider in PROVIDERS:
        fake_providers.script(provider, Answer(text="Cut short.", unterminated=True))
    openai_client = openai.OpenAI(base_url=urls["OPENAI_BASE_URL"], api_key="k", max_retries=0)
    openai_chunks = list(
        openai_client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in openai_chunks if c.choices) == (
        "Cut short."
    )
    assert all(choice.finish_reason is None for c in openai_chunks for choice in c.choices)
    anthropic_client = anthropic.Anthropic(
        base_url=urls["ANTHROPIC_BASE_URL"], api_key="k", max_retries=0
    )
    anthropic_events = list(
        anthropic_client.messages.create(
            model="claude-test",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
        )
    )
    assert [event.type for event in anthropic_events][-2:] == [
        "content_block_stop",
        "message_delta",
    ]
    gemini = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=urls["GOOGLE_GEMINI_BASE_URL"])
    )
    gemini_chunks = list(gemini.models.generate_content_stream(model="gemini-test", contents="Hi"))
    assert "".join(chunk.text or "" for chunk in gemini_chunks) == "Cut short."
    assert all(
        candidate.finish_reason is None
        for chunk in gemini_chunks
        for candidate in chunk.candidates or []
    )
    # Nor does an SDK ask again (Gemini's continues only from a continuation token).
    assert [len(fake_providers.calls(provider)) for provider in PROVIDERS] == [1, 1, 1]
