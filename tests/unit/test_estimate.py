"""Token counts without a tokenizer: an upper bound for holds, an estimate for missing usage."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from creditapp.metering.estimate import estimate_tokens, upper_bound_tokens


@given(st.lists(st.text(max_size=200), max_size=5))
def test_the_hold_bound_is_never_below_the_estimate_nor_the_bytes(texts: list[str]) -> None:
    bound = upper_bound_tokens(texts)
    assert bound >= estimate_tokens(texts)
    assert bound >= sum(len(text.encode()) for text in texts)


def test_estimates_are_about_four_bytes_a_token() -> None:
    assert estimate_tokens(["a" * 400]) == 100 + 4
    assert estimate_tokens(["a" * 401]) == 101 + 4  # rounded up
    assert estimate_tokens(["日本語"]) == 3 + 4  # 9 UTF-8 bytes
    assert estimate_tokens([]) == 0
    assert upper_bound_tokens(["日本語"]) == 9 + 8
    assert upper_bound_tokens(["", ""]) == 16  # each message costs its format tokens
