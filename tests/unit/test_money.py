"""The wire format of amounts (contract section 1): exact, and never a float."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditapp.money import MAX_MICRO, AmountError, format_credits, parse_credits


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
        ("-0", {"signed": True}, "must not be zero"),
        ("-1", {}, "must be positive"),
        ("-1", {"allow_zero": True}, "must be positive"),
    ],
)
def test_each_refusal_says_why(value: object, options: dict[str, bool], message: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_credits(value, **options)
    assert str(refused.value) == message


@pytest.mark.parametrize("zero", ["0", 0, "-0", "0.000000"])
def test_zero_is_an_amount_where_the_field_allows_it(zero: object) -> None:
    assert parse_credits(zero, allow_zero=True) == 0
