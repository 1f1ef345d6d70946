"""Micro-credit amounts and their wire format: the only place amounts cross into or out of text.

1 credit = 0.001 USD = 1,000,000 micro-credits (µcr). Internally every amount is an exact int of
µcr. On the wire an amount is a decimal string in credits with at most 6 decimals and no trailing
zeros ("5750", "0.015"); a request may also send a JSON integer. Nothing here touches a float.
"""

from __future__ import annotations

import re

MICRO_PER_CREDIT = 1_000_000
MAX_CREDITS = 1_000_000_000
MAX_MICRO = MAX_CREDITS * MICRO_PER_CREDIT

_AMOUNT = re.compile(r"(?P<sign>-?)(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]{1,6}))?")


class AmountError(ValueError):
    """An amount is not of the wire format, or outside what the field allows."""


def parse_credits(value: object, *, signed: bool = False, allow_zero: bool = False) -> int:
    """Parse a wire amount (a credit string or a JSON integer) into micro-credits.

    Unsigned amounts must be positive (or zero, with `allow_zero`); signed amounts
    (adjustments) must be non-zero.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        # bool is an int subclass; a JSON float (or an integer longer than any amount) arrives
        # as a Decimal: refused.
        raise AmountError("must be a decimal string in credits or a whole number, not a JSON float")
    if isinstance(value, int):
        micro = value * MICRO_PER_CREDIT
    else:
        match = _AMOUNT.fullmatch(value)
        if match is None:
            raise AmountError(
                'must be a decimal string in credits with at most 6 decimals, e.g. "12.5"'
            )
        if len(match["whole"].lstrip("0")) > len(str(MAX_CREDITS)):
            # Refused before int(), which gives up on strings of thousands of digits.
            raise AmountError(f"must be at most {MAX_CREDITS:,} credits")
        fraction = (match["fraction"] or "").ljust(6, "0")
        micro = int(match["whole"]) * MICRO_PER_CREDIT + int(fraction)
        if match["sign"]:
            micro = -micro
    if abs(micro) > MAX_MICRO:
        raise AmountError(f"must be at most {MAX_CREDITS:,} credits")
    if micro == 0 and not allow_zero:
        raise AmountError("must not be zero")
    if micro < 0 and not signed:
        raise AmountError("must be positive")
    return micro


def format_credits(micro: int) -> str:
    """Format micro-credits as the shortest exact credit string: 5750000000 -> "5750"."""
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise TypeError(f"amounts are whole micro-credits, got {type(micro).__name__}")
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO_PER_CREDIT)
    if fraction == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:06d}".rstrip("0")
