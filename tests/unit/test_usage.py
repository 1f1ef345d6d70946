"""Normalized usage (contract section 3): whole counts, parts within their wholes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditapp.errors import InconsistentUsage
from creditapp.metering.usage import Usage


@pytest.mark.parametrize(
    "counts",
    [
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 10, "output_tokens": -1},
        {"input_tokens": 10, "output_tokens": 0, "cached_tokens": -1},
        {"input_tokens": 10, "output_tokens": 0, "cached_tokens": 8, "cache_write_tokens": 3},
        {"input_tokens": 10, "output_tokens": 0, "cache_write_tokens": 11},
        {"input_tokens": 1, "output_tokens": 5, "reasoning_tokens": 6},
        {"input_tokens": 1.5, "output_tokens": 0},
        {"input_tokens": "1", "output_tokens": 0},
    ],
)
def test_inconsistent_usage_is_refused(counts: dict[str, object]) -> None:
    with pytest.raises(InconsistentUsage):
        Usage(**counts)  # type: ignore[arg-type]


counts = st.integers(min_value=0, max_value=10**9)


@given(cached=counts, written=counts, uncached=counts, reasoning=counts, answering=counts)
def test_the_parts_add_up_to_what_is_charged(
    cached: int, written: int, uncached: int, reasoning: int, answering: int
) -> None:
    usage = Usage(
        input_tokens=cached + written + uncached,
        output_tokens=reasoning + answering,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )
    assert usage.uncached_input_tokens == uncached
    assert usage.counts() == {
        "input_tokens": cached + written + uncached,
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "output_tokens": reasoning + answering,
        "reasoning_tokens": reasoning,
    }
    assert not usage.estimated


def test_output_within_a_limit_keeps_reasoning_a_part_of_it() -> None:
    usage = Usage(input_tokens=5, output_tokens=900, reasoning_tokens=700, cached_tokens=2)
    assert usage.output_within(1000) is usage
    assert usage.output_within(500) == Usage(
        input_tokens=5, output_tokens=500, reasoning_tokens=500, cached_tokens=2
    )
