"""Integration tests use a real database; each test leaves it empty for the next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, select, text, update

from creditapp import kept
from creditapp.api.limits import limiter
from creditapp.auth.models import Tier
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import BACKEND
from tests.fake_providers import FakeProviders

# Every table the models define, dependents first, but the seeded tiers every test relies on
# (restored instead: a fuzzer may rewrite or add tiers through the admin API).
SEEDED = {"tiers"}


def _tables() -> list[str]:
    return [t.name for t in reversed(db.metadata.sorted_tables) if t.name not in SEEDED]


@pytest.fixture(scope="session")
def seeded_tiers(app: Flask) -> list[dict[str, Any]]:
    with app.app_context():
        rows = [dict(row._mapping) for row in db.session.execute(select(Tier.__table__))]
        db.session.remove()
    return rows


@pytest.fixture(autouse=True)
def clean_database(
    app: Flask, fake_providers: FakeProviders, seeded_tiers: list[dict[str, Any]]
) -> Iterator[None]:
    yield
    fake_providers.reset()
    tiers = Tier.__table__
    with app.app_context():
        db.session.remove()
        with write_transaction(db.session) as session:
            if BACKEND == "postgresql":
                session.execute(text(f"TRUNCATE {', '.join(_tables())} RESTART IDENTITY CASCADE"))
            else:
                for table in _tables():
                    session.execute(text(f"DELETE FROM {table}"))
            names = [row["name"] for row in seeded_tiers]
            session.execute(delete(tiers).where(tiers.c.name.not_in(names)))
            for row in seeded_tiers:
                session.execute(update(tiers).where(tiers.c.name == row["name"]).values(**row))
        kept.forget_everything()
        if app.config["RATELIMIT_ENABLED"]:
            limiter.reset()
