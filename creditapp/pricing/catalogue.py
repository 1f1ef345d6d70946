"""Seeding the price book from the `genai-prices` package's bundled catalogue (no network).

The catalogue gives each model either one price or a list of prices by start date, and any
price may be tiered by prompt size. Each dated price becomes a row with that `effective_from`
(the undated first one takes effect at `CATALOGUE_EPOCH`), each tiered price a row with
`prompt_tiers`. History is never rewritten: a model already in the book only gets the
catalogue's current price (as of now, when it differs from the book's) and its future prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from genai_prices import data_snapshot
from genai_prices.types import ConditionalPrice, ModelPrice, StartDateConstraint, TieredPrices
from sqlalchemy import select

from creditapp.database import DbSession
from creditapp.ledger import AuditContext
from creditapp.metering.providers import SDK_PROVIDERS
from creditapp.pricing import book
from creditapp.pricing.models import Price

CATALOGUE_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_FIELDS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cached_input": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
}


@dataclass(frozen=True)
class CataloguePrice:
    provider: str
    model: str
    effective_from: datetime
    rates: book.Rates
    prompt_tiers: list[dict[str, Any]] | None


@dataclass(frozen=True)
class SyncReport:
    catalogue_version: str
    added: int
    skipped_models: int


def catalogue_version() -> str:
    return f"genai-prices {version('genai-prices')}"


def _as_row(
    provider: str, model: str, effective_from: datetime, price: ModelPrice
) -> CataloguePrice | None:
    values = {field: getattr(price, key, None) for field, key in _FIELDS.items()}
    if values["input"] is None or values["output"] is None:
        return None  # embeddings, image-only or unpriced models: nothing to chat with

    def base(value: Decimal | TieredPrices | None) -> Decimal | None:
        return value.base if isinstance(value, TieredPrices) else value

    thresholds = sorted(
        {
            tier.start
            for value in values.values()
            if isinstance(value, TieredPrices)
            for tier in value.tiers
        }
    )

    def at(value: Decimal | TieredPrices | None, threshold: int) -> Decimal | None:
        if not isinstance(value, TieredPrices):
            return value
        applicable = value.base
        for tier in value.tiers:
            if threshold >= tier.start:
                applicable = tier.price
        return applicable

    prompt_tiers = [
        {
            "above_input_tokens": threshold,
            **{
                field: (None if at(value, threshold) is None else str(at(value, threshold)))
                for field, value in values.items()
            },
        }
        for threshold in thresholds
    ]
    rates = book.Rates(
        input=base(values["input"]),  # type: ignore[arg-type]
        output=base(values["output"]),  # type: ignore[arg-type]
        cached_input=base(values["cached_input"]),
        cache_write=base(values["cache_write"]),
    )
    return CataloguePrice(provider, model, effective_from, rates, prompt_tiers or None)


def _start(constraint: object) -> datetime:
    if isinstance(constraint, StartDateConstraint):
        start: date = constraint.start_date
        return datetime(start.year, start.month, start.day, tzinfo=UTC)
    return CATALOGUE_EPOCH


def catalogue_prices() -> tuple[list[CataloguePrice], int]:
    """Every chat price of our providers in the bundled catalogue, and how many models had none."""
    rows: list[CataloguePrice] = []
    skipped = 0
    for provider in data_snapshot.get_snapshot().providers:
        if provider.id not in SDK_PROVIDERS:
            continue
        for model in provider.models:
            dated: list[tuple[datetime, ModelPrice]]
            if isinstance(model.prices, list):
                dated = [
                    (_start(conditional.constraint), conditional.prices)
                    for conditional in model.prices
                    if isinstance(conditional, ConditionalPrice)
                    and isinstance(conditional.prices, ModelPrice)
                ]
            else:
                dated = [(CATALOGUE_EPOCH, model.prices)]
            converted = [_as_row(provider.id, model.id, start, price) for start, price in dated]
            model_rows = [row for row in converted if row is not None]
            if not model_rows:
                skipped += 1
            rows.extend(model_rows)
    return rows, skipped


def _same(price: Price, row: CataloguePrice) -> bool:
    return (
        price.input == row.rates.input
        and price.output == row.rates.output
        and price.cached_input == row.rates.cached_input
        and price.cache_write == row.rates.cache_write
        and (price.prompt_tiers or None) == row.prompt_tiers
    )


def sync(session: DbSession, *, context: AuditContext, now: datetime) -> SyncReport:
    """Add the catalogue's prices to the book, each audited (the caller's transaction)."""
    source = catalogue_version()
    rows, skipped = catalogue_prices()
    by_model: dict[tuple[str, str], list[CataloguePrice]] = {}
    for row in rows:
        by_model.setdefault((row.provider, row.model), []).append(row)

    added = 0
    for (provider, model), model_rows in by_model.items():
        model_rows.sort(key=lambda row: row.effective_from)
        book_rows = session.scalars(
            select(Price).where(Price.provider == provider, Price.model == model)
        ).all()
        if not book_rows:
            wanted = model_rows
        else:
            known_times = {price.effective_from for price in book_rows}
            current = [row for row in model_rows if row.effective_from <= now][-1:]
            wanted = [
                row
                for row in model_rows
                if row.effective_from > now and row.effective_from not in known_times
            ]
            in_force = max(
                (price for price in book_rows if price.effective_from <= now),
                key=lambda price: price.effective_from,
                default=None,
            )
            for row in current:
                if in_force is None or not _same(in_force, row):
                    wanted.insert(
                        0, CataloguePrice(provider, model, now, row.rates, row.prompt_tiers)
                    )
        for row in wanted:
            book.add(
                session,
                provider=provider,
                model=model,
                rates=row.rates,
                effective_from=row.effective_from,
                prompt_tiers=row.prompt_tiers,
                source=source,
                context=context,
                now=now,
            )
            added += 1
    return SyncReport(source, added, skipped)
