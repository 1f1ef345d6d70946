"""Request parsing for every blueprint: 400 (not 422) with per-field details, and JSON read so
that a JSON float can be told from an integer and NaN/Infinity are refused."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Request
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from creditapp.errors import ValidationFailed


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def load_json(raw: bytes) -> Any:
    # Floats arrive as Decimal so that amount fields can refuse them; ints stay ints.
    return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)


class RequestParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400
    # An unknown query parameter is most often a typo ("limt"): say so instead of ignoring it.
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": ma.RAISE}

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        return load_json(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = RequestParser()


def path_id(value: str, name: str) -> int:
    """An id from the URL path; a malformed one is a 400 naming the parameter."""
    if value.isdigit() and len(value) <= 18:
        return int(value)
    raise ValidationFailed(details={name: ["Not a valid id."]})
