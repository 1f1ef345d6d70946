"""creditapp: prepaid credits for an AI chat product. `create_app` builds the service."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from creditapp.config import load_config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment's settings, with `overrides` applied on top."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(load_config())
    app.config.update(overrides or {})

    register_logging(app)
    register_extensions(app)
    register_providers(app)
    register_http(app)
    register_commands(app)
    register_celery(app)
    return app


def register_logging(app: Flask) -> None:
    from creditapp.logging import configure_logging

    configure_logging(app.config["LOG_LEVEL"])


def register_extensions(app: Flask) -> None:
    from creditapp.auth.tokens import register_token_rules
    from creditapp.database import configure_engine
    from creditapp.extensions import db, jwt, migrate

    sqlite_prefix = "sqlite:///"
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith(sqlite_prefix):
        database_file = Path(app.config["SQLALCHEMY_DATABASE_URI"][len(sqlite_prefix) :])
        database_file.parent.mkdir(parents=True, exist_ok=True)
    # Every model must be imported before the metadata is used by Alembic or create_all.
    from creditapp import idempotency  # noqa: F401
    from creditapp.accounts import models as accounts_models  # noqa: F401
    from creditapp.auth import models as auth_models  # noqa: F401
    from creditapp.billing import models as billing_models  # noqa: F401
    from creditapp.chat import models as chat_models  # noqa: F401
    from creditapp.jobs import models as jobs_models  # noqa: F401
    from creditapp.ledger import models as ledger_models  # noqa: F401
    from creditapp.pricing import models as pricing_models  # noqa: F401
    from creditapp.purchases import models as purchases_models  # noqa: F401
    from creditapp.signals import models as signals_models  # noqa: F401

    db.init_app(app)
    with app.app_context():
        configure_engine(
            db.engine, statement_timeout_seconds=app.config["DATABASE_STATEMENT_TIMEOUT_SECONDS"]
        )
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    jwt.init_app(app)
    register_token_rules(jwt)


def register_providers(app: Flask) -> None:
    from creditapp.metering.providers import Connection, Providers

    app.extensions["providers"] = Providers(
        {
            name: Connection(
                base_url=settings.base_url,
                api_key=settings.api_key,
                timeout_seconds=app.config["PROVIDER_TIMEOUT_SECONDS"],
                max_retries=app.config["PROVIDER_MAX_RETRIES"],
            )
            for name, settings in app.config["PROVIDER_SETTINGS"].items()
        }
    )


def register_http(app: Flask) -> None:
    # The app factory is the one place outside the HTTP layer that knows it.
    from creditapp.api import register_api

    register_api(app)
    from creditapp.api.limits import limiter
    from creditapp.web import blp as web

    # Pages and their assets hold no data: loading them spends nobody's API budget.
    limiter.exempt(web)
    app.register_blueprint(web)


def register_commands(app: Flask) -> None:
    from creditapp.cli import register_cli

    register_cli(app)


def register_celery(app: Flask) -> None:
    from creditapp.celery_app import celery_init_app

    celery_init_app(app)
