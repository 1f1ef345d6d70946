"""Cost arithmetic: exact Decimal prices in, integer micro-credits out, rounded up once."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from creditapp.metering.usage import Usage
from creditapp.pricing import book
from creditapp.pricing.models import Price

TIERED = [
    {
        "above_input_tokens": 1000,
        "input": "4",
        "cached_input": "0.4",
        "cache_write": None,
        "output": "20",
    }
]


def price(**fields: object) -> Price:
    values = {
        "input": Decimal("2"),
        "output": Decimal("10"),
        "cached_input": None,
        "cache_write": None,
    }
    values.update(fields)
    return Price(**values)


def test_missing_cache_prices_fall_back_to_the_input_price() -> None:
    usage = Usage(input_tokens=100, cached_tokens=30, cache_write_tokens=20, output_tokens=0)
    assert book.cost(price(), usage) == 100 * 2000
    priced = price(cached_input=Decimal("0.5"), cache_write=Decimal("3"))
    assert book.cost(priced, usage) == 50 * 2000 + 30 * 500 + 20 * 3000


def test_a_call_above_a_tier_threshold_pays_the_tier_for_every_token() -> None:
    tiered = price(prompt_tiers=TIERED)
    assert book.cost(tiered, Usage(input_tokens=1000, output_tokens=1)) == 1000 * 2000 + 10_000
    assert book.cost(tiered, Usage(input_tokens=1001, output_tokens=1)) == 1001 * 4000 + 20_000
    cached = Usage(input_tokens=2000, cached_tokens=1000, output_tokens=0)
    assert book.cost(tiered, cached) == 1000 * 4000 + 1000 * 400


def test_the_worst_case_uses_the_highest_rates_of_every_tier() -> None:
    tiered = price(prompt_tiers=TIERED, cache_write=Decimal("5"))
    # The highest input-side rate is the base tier's cache write (5) here, output the tier's 20.
    assert (
        book.worst_case(tiered, input_tokens=10, max_output_tokens=100) == 10 * 5000 + 100 * 20_000
    )


@given(
    input_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**6),
    input_millionths=st.integers(0, 10**8),
    output_millionths=st.integers(0, 10**8),
)
def test_the_cost_is_the_exact_value_rounded_up_once(
    input_tokens: int, output_tokens: int, input_millionths: int, output_millionths: int
) -> None:
    row = price(input=Decimal(input_millionths) / 10**6, output=Decimal(output_millionths) / 10**6)
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    # In integers: µcr = tokens * millionths / 1000, rounded up.
    exact_thousandths = input_tokens * input_millionths + output_tokens * output_millionths
    assert book.cost(row, usage) == -(-exact_thousandths // 1000)
    assert book.worst_case(
        row, input_tokens=input_tokens, max_output_tokens=output_tokens
    ) >= book.cost(row, usage)


def test_a_tiers_own_cache_write_price_prices_its_cache_writes() -> None:
    tiered = price(prompt_tiers=[{**TIERED[0], "cache_write": "6"}])
    writes = Usage(input_tokens=2000, cache_write_tokens=500, output_tokens=0)
    assert book.cost(tiered, writes) == 1500 * 4000 + 500 * 6000


def test_a_receipts_lines_are_the_buckets_of_the_cost_and_name_the_tier() -> None:
    tiered = price(prompt_tiers=TIERED, cache_write=Decimal("3"))
    usage = Usage(input_tokens=1500, cached_tokens=1000, cache_write_tokens=200, output_tokens=7)
    threshold, rates = book.tier_for(tiered, usage.input_tokens)
    assert threshold == 1000  # above 1,000 input tokens: the tier's rates, cache writes at input
    assert [(line.bucket, line.tokens, line.usd_per_million) for line in rates.lines(usage)] == [
        ("input", 300, Decimal("4")),
        ("cached_input", 1000, Decimal("0.4")),
        ("cache_write", 200, Decimal("4")),
        ("output", 7, Decimal("20")),
    ]
    lines = rates.lines(usage)
    assert sum(line.micro_credits for line in lines) == rates.exact_micro_credits(usage)
    assert book.round_up(rates.exact_micro_credits(usage)) == book.cost(tiered, usage)
    assert [line.micro_credits for line in lines] == [1_200_000, 400_000, 800_000, 140_000]


@st.composite
def provider_usages(draw: st.DrawFn) -> Usage:
    """Usage as each provider's adapter normalizes it (creditapp.metering.providers):
    OpenAI's prompt includes its cached tokens and its completion its reasoning; Anthropic's
    cache reads and writes are added to its input; Gemini's thoughts are added to its output."""
    shape = draw(st.sampled_from(["openai", "anthropic", "google"]))
    count = st.integers(0, 10**6)
    if shape == "openai":
        cached, prompt = draw(count), draw(count)
        reasoning, completion = draw(count), draw(count)
        return Usage(
            input_tokens=prompt + cached,
            cached_tokens=cached,
            output_tokens=completion + reasoning,
            reasoning_tokens=reasoning,
        )
    if shape == "anthropic":
        read, write, fresh = draw(count), draw(count), draw(count)
        return Usage(
            input_tokens=fresh + read + write,
            cached_tokens=read,
            cache_write_tokens=write,
            output_tokens=draw(count),
        )
    cached, prompt, thoughts, candidates = draw(count), draw(count), draw(count), draw(count)
    return Usage(
        input_tokens=prompt + cached,
        cached_tokens=cached,
        output_tokens=candidates + thoughts,
        reasoning_tokens=thoughts,
    )


@given(usage=provider_usages(), tiered=st.booleans())
def test_a_receipt_adds_up_to_the_charge_for_every_providers_usage(
    usage: Usage, tiered: bool
) -> None:
    """What a receipt shows, line by line, sums to the exact cost, whose rounding up is what
    was charged; and every token is on exactly one line (reasoning is part of output)."""
    row = price(
        cached_input=Decimal("0.25"),
        cache_write=Decimal("3.75"),
        prompt_tiers=TIERED if tiered else None,
    )
    _threshold, rates = book.tier_for(row, usage.input_tokens)
    lines = rates.lines(usage)
    assert sum(line.tokens for line in lines) == usage.input_tokens + usage.output_tokens
    assert sum(line.micro_credits for line in lines) == rates.exact_micro_credits(usage)
    assert book.round_up(rates.exact_micro_credits(usage)) == book.cost(row, usage)
    for line in lines:  # by hand: 1 USD per 1M tokens is 1,000 µcr (0.001 credit) per token
        assert line.micro_credits == line.tokens * line.usd_per_million * 1000
