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
from creditapp.ids import NOT_AN_ID, parse_id


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def load_json(raw: bytes) -> Any:
    # Floats arrive as Decimal so that amount fields can refuse them; ints stay ints.
    document = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    refuse_unstorable_text(document)
    return document


UNSTORABLE = "Text may not contain NUL characters or unpaired surrogates."


def _storable(text: str) -> bool:
    # PostgreSQL's text refuses NUL; UTF-8 (either database) has no unpaired surrogates.
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_unstorable_text(document: Any) -> None:
    """Refuse, before anything is held or called, any text the database could not store: a
    request that passed here cannot fail later on its own text. Every string counts, keys
    too; the first one found is named by its path ("tiers.0.name")."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:  # a loop, not recursion: depth is the client's to choose
        path, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                item_path = f"{path}.{key}" if path else str(key)
                if not _storable(key):
                    raise ValidationFailed(details={path or "body": [UNSTORABLE]})
                pending.append((item_path, item))
        elif isinstance(value, list):
            pending.extend(
                (f"{path}.{index}" if path else str(index), item)
                for index, item in enumerate(value)
            )
        elif isinstance(value, str) and not _storable(value):
            raise ValidationFailed(details={path or "body": [UNSTORABLE]})


class RequestParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400
    # An unknown query parameter is most often a typo ("limt"): say so instead of ignoring it.
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": ma.RAISE}

    def load_querystring(self, req: Request, schema: ma.Schema) -> Any:
        for name, value in req.args.items(multi=True):
            if not _storable(name):
                raise ValidationFailed(details={"query": [UNSTORABLE]})
            if not _storable(value):
                raise ValidationFailed(details={name: [UNSTORABLE]})
        return super().load_querystring(req, schema)

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        return load_json(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = RequestParser()


def path_id(value: str, name: str) -> int:
    """An id from the URL path; a malformed one is a 400 naming the parameter."""
    parsed = parse_id(value)
    if parsed is None:
        raise ValidationFailed(details={name: [NOT_AN_ID]})
    return parsed
