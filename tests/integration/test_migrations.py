"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from flask import Flask
from flask_migrate import check

from creditapp import MIGRATIONS_DIR


def test_models_and_migrations_agree(app: Flask) -> None:
    with app.app_context():
        check(directory=str(MIGRATIONS_DIR))  # raises if autogenerate would add anything
