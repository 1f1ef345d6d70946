"""List cursors: opaque, round-trip exactly, and anything else is a 400 naming `cursor`."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditapp.api.pagination import decode_cursor, encode_cursor
from creditapp.errors import ValidationFailed


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_cursor_round_trips(position: int) -> None:
    cursor = encode_cursor(position)
    assert cursor.isascii() and "=" not in cursor
    assert decode_cursor(cursor) == position


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !",
        _cursor("v2:5"),
        _cursor("v1:-5"),
        _cursor("v1:5:6"),
        _cursor("v1:"),
        _cursor("v1:١٢"),  # Arabic-Indic digits are digits to str.isdigit, not to us
        _cursor("v1:²"),
        _cursor(f"v1:{2**63}"),  # beyond any id the database holds
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_anything_but_a_cursor_we_made_is_refused(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        decode_cursor(cursor)
    assert list(refused.value.details) == ["cursor"]


def test_no_cursor_is_the_first_page() -> None:
    assert decode_cursor(None) is None
