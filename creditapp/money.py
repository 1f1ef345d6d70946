"""Amounts and prices on the wire: the only place they cross into or out of text.

1 credit = 0.001 USD = 1,000,000 micro-credits (µcr). Internally every amount is an exact int of
µcr. On the wire an amount is a decimal string in credits with at most 6 decimals and no
trailing zeros ("5750", "0.015"); a request may also send a JSON integer. A price is a decimal
string (or JSON integer) of USD per 1M tokens with at most 6 decimals. Both are read by one
strict parser of ASCII decimals. Nothing here touches a float.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICRO_PER_CREDIT = 1_000_000
MAX_CREDITS = 1_000_000_000
MAX_MICRO = MAX_CREDITS * MICRO_PER_CREDIT
MAX_USD_PER_MILLION = 1_000_000

# Python's `re` reads [0-9] as ASCII digits only, unlike `\d`. `int` and `Decimal` also read
# other scripts' digits, "_" between digits, a leading "+" and whitespace around: they are
# never given text that did not match here.
_WIRE_DECIMAL = re.compile(r"(?P<sign>-?)(?P<whole>[0-9]+)(?:\.(?P<decimals>[0-9]+))?")
AMOUNT_DECIMALS = 6


class AmountError(ValueError):
    """An amount or price is not of the wire format, or outside what the field allows."""


def _not_of_the_wire(unit: str) -> AmountError:
    return AmountError(f'must be a decimal string in {unit} with at most 6 decimals, e.g. "12.5"')


def _wire_number(value: object, *, unit: str, most: int) -> tuple[bool, int, str]:
    """Read a wire number, a decimal string or a JSON integer, as (negative, whole units, its
    decimals as written); more than `most` whole units is refused. "-0" is refused too: zero has
    no sign, and a field would echo it back."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        # bool is an int subclass; a JSON float (or an integer longer than any amount) arrives
        # as a Decimal: refused.
        raise AmountError(f"must be a decimal string in {unit} or a whole number, not a JSON float")
    if isinstance(value, int):
        negative, whole, decimals = value < 0, abs(value), ""
    else:
        match = _WIRE_DECIMAL.fullmatch(value)
        if match is None:
            raise _not_of_the_wire(unit)
        # Without leading zeros, and refused when longer than any allowed value: int() gives
        # up on strings of thousands of digits.
        digits = match["whole"].lstrip("0")
        if len(digits) > len(str(most)):
            raise AmountError(f"must be at most {most:,} {unit}")
        negative, whole, decimals = bool(match["sign"]), int(digits or "0"), match["decimals"] or ""
        if negative and whole == 0 and not decimals.strip("0"):
            raise AmountError('must not be "-0": zero has no sign')
    if whole > most or (whole == most and decimals.strip("0")):
        raise AmountError(f"must be at most {most:,} {unit}")
    return negative, whole, decimals


def parse_credits(value: object, *, signed: bool = False, allow_zero: bool = False) -> int:
    """Parse a wire amount (a credit string or a JSON integer) into micro-credits.

    Unsigned amounts must be positive (or zero, with `allow_zero`); signed amounts
    (adjustments) must be non-zero.
    """
    negative, whole, decimals = _wire_number(value, unit="credits", most=MAX_CREDITS)
    if len(decimals) > AMOUNT_DECIMALS:
        raise _not_of_the_wire("credits")
    micro = whole * MICRO_PER_CREDIT + int(decimals.ljust(AMOUNT_DECIMALS, "0"))
    if micro == 0 and not allow_zero:
        raise AmountError("must not be zero")
    if negative and not signed:
        raise AmountError("must be positive")
    return -micro if negative else micro


def parse_usd_per_million(value: object) -> Decimal:
    """Parse a wire price (USD per 1M tokens: a decimal string or a JSON integer), zero or more,
    into its exact Decimal. How many decimals it may have is the price book's rule (trailing
    zeros are not decimals)."""
    negative, whole, decimals = _wire_number(
        value, unit="USD per 1M tokens", most=MAX_USD_PER_MILLION
    )
    if negative:
        raise AmountError("must not be negative")
    return Decimal(f"{whole}.{decimals or '0'}")


def format_credits(micro: int) -> str:
    """Format micro-credits as the shortest exact credit string: 5750000000 -> "5750"."""
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise TypeError(f"amounts are whole micro-credits, got {type(micro).__name__}")
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO_PER_CREDIT)
    if fraction == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:06d}".rstrip("0")
