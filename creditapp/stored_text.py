"""Text the service composes (a client's text with words of its own, an error's message) cut to
fit the column that stores it: what a client sends is bounded by its field, but a composition
of bounded parts can still be longer than the column, and PostgreSQL refuses the whole write."""

from __future__ import annotations

from typing import Any

# The last character of a cut text, so that a reader sees that it goes on.
CUT_MARK = "\u2026"


def fitted(text: str, column: Any) -> str:
    """`text` as `column` (a mapped `String(n)` attribute) stores it: whole if it fits, else its
    first n - 1 characters and the mark. Characters, not bytes, as both databases count them."""
    limit: int = column.type.length
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK
