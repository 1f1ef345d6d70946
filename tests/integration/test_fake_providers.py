"""The fake provider server speaks each provider's streaming format too (SSE, a word an event),
read here by the official SDKs' own stream parsers: the twin the streaming tests run against."""

from __future__ import annotations

import anthropic
import openai
from google import genai
from google.genai import types

from tests.fake_providers import Answer, FakeProviders

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
