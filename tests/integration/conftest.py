"""Integration tests use a real database; each test leaves it empty for the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import text

from creditapp.api.limits import limiter
from creditapp.database import write_transaction
from creditapp.extensions import db
from tests.conftest import BACKEND
from tests.fake_providers import FakeProviders

# Every table the models define, dependents first, but the seeded tiers every test relies on.
SEEDED = {"tiers"}


def _tables() -> list[str]:
    return [t.name for t in reversed(db.metadata.sorted_tables) if t.name not in SEEDED]


@pytest.fixture(autouse=True)
def clean_database(app: Flask, fake_providers: FakeProviders) -> Iterator[None]:
    yield
    fake_providers.reset()
    with app.app_context():
        db.session.remove()
        with write_transaction(db.session) as session:
            if BACKEND == "postgresql":
                session.execute(text(f"TRUNCATE {', '.join(_tables())} RESTART IDENTITY CASCADE"))
            else:
                for table in _tables():
                    session.execute(text(f"DELETE FROM {table}"))
        if app.config["RATELIMIT_ENABLED"]:
            limiter.reset()
