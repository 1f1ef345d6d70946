"""The wire format of amounts and prices (contract section 1): exact, never a float, and one
strict reading of ASCII decimals for both."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditapp.money import (
    MAX_MICRO,
    MAX_USD_PER_MILLION,
    AmountError,
    format_credits,
    parse_credits,
    parse_usd_per_million,
)


@pytest.mark.parametrize(
    ("wire", "micro"),
    [
        ("5750", 5_750_000_000),
        ("0.015", 15_000),
        ("12.345678", 12_345_678),
        ("0.000001", 1),
        ("1.500000", 1_500_000),
        ("1000000000", MAX_MICRO),
        (7, 7_000_000),
    ],
)
def test_parses_credit_strings_and_integers(wire: object, micro: int) -> None:
    assert parse_credits(wire) == micro


@pytest.mark.parametrize(
    ("micro", "wire"),
    [
        (5_750_000_000, "5750"),
        (15_000, "0.015"),
        (12_345_678, "12.345678"),
        (1, "0.000001"),
        (0, "0"),
        (-2_500_000, "-2.5"),
        (1_500_000, "1.5"),
    ],
)
def test_formats_shortest_exact_string(micro: int, wire: str) -> None:
    assert format_credits(micro) == wire


@pytest.mark.parametrize(
    "bad",
    [
        "0",
        0,
        "-1",
        -1,
        "0.0000001",
        "1.1234567",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        1.5,
        Decimal("1.5"),
        True,
        False,
        "abc",
        "",
        " 1",
        "1 ",
        "+1",
        "1.",
        ".5",
        "1,5",
        "0x10",
        "1000000000.000001",
        1_000_000_001,
        None,
        [],
        {},
    ],
)
def test_refuses_every_bad_amount(bad: object) -> None:
    with pytest.raises(AmountError):
        parse_credits(bad)


def test_signed_amounts_allow_negatives_but_not_zero() -> None:
    assert parse_credits("-0.5", signed=True) == -500_000
    assert parse_credits(-3, signed=True) == -3_000_000
    with pytest.raises(AmountError):
        parse_credits("-0", signed=True)
    with pytest.raises(AmountError):
        parse_credits("-1000000000.000001", signed=True)


def test_format_refuses_non_integers() -> None:
    with pytest.raises(TypeError):
        format_credits(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_credits(True)


@given(st.integers(min_value=1, max_value=MAX_MICRO))
def test_round_trip_of_every_positive_amount(micro: int) -> None:
    wire = format_credits(micro)
    assert parse_credits(wire) == micro
    assert "e" not in wire.lower()
    assert not wire.endswith("0") or "." not in wire


@given(st.integers(min_value=-MAX_MICRO, max_value=MAX_MICRO).filter(bool))
def test_round_trip_of_signed_amounts(micro: int) -> None:
    assert parse_credits(format_credits(micro), signed=True) == micro


@given(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**9), places=6))
def test_decimal_strings_parse_exactly(value: Decimal) -> None:
    assert parse_credits(format(value, "f")) == int(value * 1_000_000)


@pytest.mark.parametrize(
    ("value", "options", "message"),
    [
        (1.5, {}, "must be a decimal string in credits or a whole number, not a JSON float"),
        (True, {}, "must be a decimal string in credits or a whole number, not a JSON float"),
        ("1e3", {}, 'must be a decimal string in credits with at most 6 decimals, e.g. "12.5"'),
        ("1000000001", {}, "must be at most 1,000,000,000 credits"),
        ("0", {}, "must not be zero"),
        ("-0", {"signed": True}, 'must not be "-0": zero has no sign'),
        ("-0.0", {"allow_zero": True}, 'must not be "-0": zero has no sign'),
        ("-1", {}, "must be positive"),
        ("-1", {"allow_zero": True}, "must be positive"),
    ],
)
def test_each_refusal_says_why(value: object, options: dict[str, bool], message: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_credits(value, **options)
    assert str(refused.value) == message


@pytest.mark.parametrize("zero", ["0", 0, "0.000000", "00"])
def test_zero_is_an_amount_where_the_field_allows_it(zero: object) -> None:
    assert parse_credits(zero, allow_zero=True) == 0


# What `int`, `Decimal` or `str.isdigit` read as a number and the wire refuses: other scripts'
# digits (fullwidth, Arabic-Indic, superscript), "_" between digits, a sign of "+", whitespace
# around, and a zero with a sign.
NOT_ASCII_DECIMALS = [
    "\uff11\uff12",
    "\u0663",
    "1\u0662",
    "\u00b2",
    "5.\uff15",
    "1_000",
    "1_0.5",
    "+5",
    " 5 ",
    "5 ",
    " 5",
    "5\n",
    "\u00a05",
    "-0",
    "-0.0",
    "-0.000000",
    "-00",
]
OPTIONS = [{}, {"signed": True}, {"allow_zero": True}, {"signed": True, "allow_zero": True}]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("text", NOT_ASCII_DECIMALS)
def test_amounts_are_ascii_decimals_only(text: str, options: dict[str, bool]) -> None:
    with pytest.raises(AmountError):
        parse_credits(text, **options)


@pytest.mark.parametrize("text", NOT_ASCII_DECIMALS)
def test_prices_are_ascii_decimals_only(text: str) -> None:
    with pytest.raises(AmountError):
        parse_usd_per_million(text)


@pytest.mark.parametrize(
    ("wire", "price"),
    [
        ("2.5", Decimal("2.5")),
        ("0", Decimal(0)),
        ("0.000001", Decimal("0.000001")),
        ("1000000", Decimal(1_000_000)),
        ("1.500000", Decimal("1.5")),
        # How many decimals a price may have is the price book's rule, not the wire's.
        ("1.0000001", Decimal("1.0000001")),
        ("1.5000000000", Decimal("1.5")),
        (3, Decimal(3)),
        (0, Decimal(0)),
    ],
)
def test_parses_prices_exactly(wire: object, price: Decimal) -> None:
    assert parse_usd_per_million(wire) == price


PRICE_FORMAT = 'must be a decimal string in USD per 1M tokens with at most 6 decimals, e.g. "12.5"'
PRICE_NOT_FLOAT = (
    "must be a decimal string in USD per 1M tokens or a whole number, not a JSON float"
)
PRICE_TOO_HIGH = "must be at most 1,000,000 USD per 1M tokens"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("-1", "must not be negative"),
        (-1, "must not be negative"),
        ("1e3", PRICE_FORMAT),
        ("NaN", PRICE_FORMAT),
        ("1000000.000001", PRICE_TOO_HIGH),
        (1_000_001, PRICE_TOO_HIGH),
        ("9" * 5000, PRICE_TOO_HIGH),
        (2.5, PRICE_NOT_FLOAT),
        (Decimal("2.5"), PRICE_NOT_FLOAT),
        (True, PRICE_NOT_FLOAT),
        (None, PRICE_NOT_FLOAT),
    ],
)
def test_each_refusal_of_a_price_says_why(bad: object, message: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_usd_per_million(bad)
    assert str(refused.value) == message


def test_leading_zeros_of_any_length_are_read_not_given_to_int() -> None:
    assert parse_credits("0" * 5000 + "1.5") == 1_500_000
    assert parse_usd_per_million("0" * 5000 + "2") == Decimal(2)


@given(st.decimals(min_value=0, max_value=MAX_USD_PER_MILLION, places=6))
def test_every_price_of_6_decimals_parses_exactly(price: Decimal) -> None:
    assert parse_usd_per_million(format(price, "f")) == price


STRICT = re.compile(r"-?[0-9]+(\.[0-9]{1,6})?")
DIGITS_OF_OTHER_SCRIPTS = [
    chr(code) for code in range(0x80, 0x110000) if unicodedata.digit(chr(code), None) is not None
]
WHITESPACE = [chr(code) for code in range(0x110000) if chr(code).isspace()]


@st.composite
def near_decimals(draw: st.DrawFn) -> str:
    """A valid decimal string made invalid in one of the ways `int` and `Decimal` forgive."""
    value = draw(st.decimals(min_value=-(10**9), max_value=10**9, places=6))
    text = format(value, "f")
    digits = [index for index, char in enumerate(text) if char.isdigit()]
    spoilt = draw(st.sampled_from(["script", "underscore", "plus", "space", "negative zero"]))
    if spoilt == "script":
        index = draw(st.sampled_from(digits))
        text = text[:index] + draw(st.sampled_from(DIGITS_OF_OTHER_SCRIPTS)) + text[index + 1 :]
    elif spoilt == "underscore":
        index = draw(st.sampled_from(digits))
        text = text[: index + 1] + "_" + text[index + 1 :]
    elif spoilt == "plus":
        text = "+" + text.lstrip("-")
    elif spoilt == "space":
        around = st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=2).map("".join)
        before, after = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
        text = (draw(around) if before else "") + text + (draw(around) if after else "")
    else:
        text = "-" + "0" * draw(st.integers(1, 3)) + draw(st.sampled_from(["", ".0", ".000000"]))
    return text


@given(near_decimals(), st.sampled_from(OPTIONS))
def test_what_int_and_decimal_forgive_the_wire_refuses(text: str, options: dict[str, bool]) -> None:
    with pytest.raises(AmountError):
        parse_credits(text, **options)
    with pytest.raises(AmountError):
        parse_usd_per_million(text)


@given(st.text())
def test_any_text_is_read_only_when_strict_ascii_and_otherwise_refused(text: str) -> None:
    """Nothing but AmountError escapes, and what is read is of the strict form."""
    for parse in (
        lambda: parse_credits(text, signed=True, allow_zero=True),
        lambda: parse_usd_per_million(text),
    ):
        try:
            parse()
        except AmountError:
            continue
        assert STRICT.fullmatch(text) and text.isascii(), text
