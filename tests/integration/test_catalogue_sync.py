"""`flask pricing sync`: the genai-prices catalogue into the price book, never rewriting history."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from flask import Flask
from sqlalchemy import select

from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.pricing import catalogue
from creditapp.pricing.models import Price
from tests.conftest import TEST_CONTEXT, utcnow
from tests.helpers import add_price


def test_the_catalogue_sync_seeds_dated_and_tiered_prices_once(app: Flask) -> None:
    now = utcnow()
    with app.app_context():
        with write_transaction(db.session):
            first = catalogue.sync(db.session, context=TEST_CONTEXT, now=now)
        with write_transaction(db.session):
            second = catalogue.sync(
                db.session, context=TEST_CONTEXT, now=now + timedelta(minutes=1)
            )
        assert first.catalogue_version.startswith("genai-prices ")
        assert first.added > 100 and second.added == 0
        rows = db.session.scalars(
            select(Price).where(Price.provider == "anthropic", Price.model == "claude-3-5-sonnet")
        ).all()
        assert [(r.input, r.cached_input, r.cache_write, r.output) for r in rows] == [
            (Decimal("3"), Decimal("0.3"), Decimal("3.75"), Decimal("15"))
        ]
        assert rows[0].source == first.catalogue_version
        # A model priced by prompt size keeps its tiers; one with dated prices gets a row per date.
        gemini = db.session.scalars(
            select(Price).where(Price.provider == "google", Price.model == "gemini-2.5-pro")
        ).one()
        assert gemini.prompt_tiers == [
            {
                "above_input_tokens": 200000,
                "input": "2.5",
                "output": "15",
                "cached_input": "0.25",
                "cache_write": None,
            }
        ]
        o3 = db.session.scalars(
            select(Price.effective_from)
            .where(Price.provider == "openai", Price.model == "o3")
            .order_by(Price.effective_from)
        ).all()
        assert [moment.date().isoformat() for moment in o3] == ["2000-01-01", "2025-06-10"]
        db.session.remove()


def test_the_sync_never_rewrites_history_and_adds_a_changed_current_price(app: Flask) -> None:
    earlier = add_price(app, "anthropic", "claude-3-5-sonnet", input="9", output="9")
    now = utcnow()
    with app.app_context():
        with write_transaction(db.session):
            catalogue.sync(db.session, context=TEST_CONTEXT, now=now)
        rows = db.session.execute(
            select(Price.id, Price.input, Price.effective_from)
            .where(Price.provider == "anthropic", Price.model == "claude-3-5-sonnet")
            .order_by(Price.effective_from)
        ).all()
        db.session.remove()
    assert [(row.id, row.input) for row in rows] == [
        (earlier, Decimal("9")),
        (rows[1].id, Decimal("3")),
    ]
    assert rows[1].effective_from == now
