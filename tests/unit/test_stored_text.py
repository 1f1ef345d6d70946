"""Composed text cut to fit its column: whole when it fits, else ending in the cut mark."""

from __future__ import annotations

import pytest

from creditapp.billing.models import Compensation
from creditapp.stored_text import CUT_MARK, fitted


@pytest.mark.parametrize("character", ["x", "\u00e9", "\U0001f600"])
def test_text_that_fits_is_kept_whole(character: str) -> None:
    assert fitted(character * 500, Compensation.reason) == character * 500


@pytest.mark.parametrize("length", [501, 520, 64 * 1024])
@pytest.mark.parametrize("character", ["x", "\u00e9", "\U0001f600"])
def test_longer_text_is_cut_to_the_column_and_marked(length: int, character: str) -> None:
    assert fitted(character * length, Compensation.reason) == character * 499 + CUT_MARK
    assert fitted(character * length, Compensation.last_error) == character * 499 + CUT_MARK
