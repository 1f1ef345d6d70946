"""Cursor pagination: newest first, the cursor is an opaque position strictly below which the
next page starts, so rows inserted meanwhile never shift or repeat a page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select

from creditapp.database import DbSession
from creditapp.errors import ValidationFailed

Item = TypeVar("Item")
MAX_POSITION = 2**63 - 1


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, position = text.split(":")
        # ASCII digits only (str.isdigit also takes superscripts and other scripts' digits),
        # within a BIGINT.
        ascii_digits = position.isascii() and position.isdigit()
        if version == "v1" and ascii_digits and int(position) <= MAX_POSITION:
            return int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationFailed(details={"cursor": ["Not a valid cursor."]})


def keyset_page(
    session: DbSession,
    query: Select[*tuple[Any, ...]],
    *,
    key: Any,
    args: dict[str, Any],
    item: Callable[[Any], Item] = lambda row: row[0],
    position: Callable[[Item], int],
) -> dict[str, Any]:
    """One page of `query`, newest (highest `key`) first, after the cursor in `args`.

    One row more than the limit is fetched to tell whether another page exists.
    """
    limit = args["limit"]
    below = decode_cursor(args["cursor"])
    if below is not None:
        query = query.where(key < below)
    rows = session.execute(query.order_by(key.desc()).limit(limit + 1)).all()
    items = [item(row) for row in rows[:limit]]
    more = len(rows) > limit
    return {"items": items, "next_cursor": encode_cursor(position(items[-1])) if more else None}
