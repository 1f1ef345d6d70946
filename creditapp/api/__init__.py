"""The HTTP layer: thin blueprints that parse, call a domain service and dump."""

from __future__ import annotations

from flask import Flask

from creditapp.api import admin, chat, credit, jobs, me, ops, pricing
from creditapp.extensions import api


def register_blueprints(app: Flask) -> None:
    for blueprint in (me.blp, credit.blp, chat.blp, admin.blp, pricing.blp, jobs.blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(ops.blp)
