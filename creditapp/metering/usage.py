"""Normalized usage of one provider call (contract section 3), never double counted."""

from __future__ import annotations

from dataclasses import dataclass, replace

from creditapp.errors import InconsistentUsage

# The token counts of a call, by the names their columns and wire fields have everywhere.
TOKEN_COUNTERS = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True)
class Usage:
    """Token counts of one call.

    `input_tokens` counts every prompt token processed, cached or not; `cached_tokens` and
    `cache_write_tokens` are parts of it. `output_tokens` counts every generated token,
    reasoning included; `reasoning_tokens` is the part spent thinking. `estimated` is true when
    the provider reported nothing and the counts were estimated from the text.
    """

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        if any(not isinstance(count, int) or count < 0 for count in self.counts().values()):
            raise InconsistentUsage(f"Token counts must be whole numbers >= 0: {self}")
        if self.cached_tokens + self.cache_write_tokens > self.input_tokens:
            raise InconsistentUsage(
                f"Cached and cache-write tokens exceed the input tokens: {self}"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise InconsistentUsage(f"Reasoning tokens exceed the output tokens: {self}")

    def counts(self) -> dict[str, int]:
        """The five token counts by their column names (usage records and the like)."""
        return {name: getattr(self, name) for name in TOKEN_COUNTERS}

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_tokens - self.cache_write_tokens

    def output_within(self, max_tokens: int) -> Usage:
        """The usage with its output counted as at most `max_tokens`: a call asked for no more
        (reasoning included, by every provider), so a report of more is charged as that."""
        if self.output_tokens <= max_tokens:
            return self
        return replace(
            self,
            output_tokens=max_tokens,
            reasoning_tokens=min(self.reasoning_tokens, max_tokens),
        )
