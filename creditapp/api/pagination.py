"""Cursor pagination: newest first, the cursor is an opaque position strictly below which the
next page starts, so rows inserted meanwhile never shift or repeat a page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from creditapp.errors import ValidationFailed

Row = TypeVar("Row")


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, position = text.split(":")
        if version == "v1" and position.isdigit():
            return int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationFailed(details={"cursor": ["Not a valid cursor."]})


def page(rows: Sequence[Row], *, limit: int, position: Callable[[Row], int]) -> dict[str, Any]:
    """`rows` were fetched with limit + 1 to tell whether another page exists."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return {"items": items, "next_cursor": encode_cursor(position(items[-1])) if more else None}
