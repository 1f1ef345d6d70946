"""The price book's table: one row per provider, model and moment a price took effect."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from creditapp.database import BigIntId, UTCDateTime
from creditapp.errors import PriceTooPrecise
from creditapp.extensions import db

PRICE_SCALE = 1_000_000  # prices carry at most 6 decimals (USD per 1M tokens)


class UsdPerMillionTokens(TypeDecorator[Decimal]):
    """A price with at most 6 decimals, stored exactly as an integer number of millionths.

    (SQLite has no exact decimal type; an integer column is exact on both databases.)
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        scaled = value * PRICE_SCALE
        if scaled != scaled.to_integral_value():
            # The price book refuses such a price first; this keeps any other writer exact.
            raise PriceTooPrecise("price", value)
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value) / PRICE_SCALE


class Price(db.Model):  # type: ignore[name-defined,misc]
    """Never updated: a new price is a new row with a later `effective_from`."""

    __tablename__ = "prices"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    input: Mapped[Decimal] = mapped_column(UsdPerMillionTokens, nullable=False)
    cached_input: Mapped[Decimal | None] = mapped_column(UsdPerMillionTokens, nullable=True)
    cache_write: Mapped[Decimal | None] = mapped_column(UsdPerMillionTokens, nullable=True)
    output: Mapped[Decimal] = mapped_column(UsdPerMillionTokens, nullable=False)
    # Prompt-size tiers ("cliff" pricing: above a tier's threshold of input tokens, all tokens
    # of the call pay that tier's prices): [{"above_input_tokens", "input", "cached_input",
    # "cache_write", "output"}], prices as decimal strings.
    prompt_tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Where the row came from: "genai-prices 0.2.3" or "admin:<user id>".
    source: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        UniqueConstraint("provider", "model", "effective_from", name="uq_prices_model_time"),
        CheckConstraint(
            "input >= 0 AND output >= 0 AND (cached_input IS NULL OR cached_input >= 0)"
            " AND (cache_write IS NULL OR cache_write >= 0)",
            name="prices_not_negative",
        ),
    )
