"""The HTTP layer: thin blueprints that parse, call a domain service and dump."""

from __future__ import annotations

from flask import Flask

from creditapp.api import admin, credit, me, ops
from creditapp.extensions import api


def register_blueprints(app: Flask) -> None:
    for blueprint in (me.blp, credit.blp, admin.blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(ops.blp)
