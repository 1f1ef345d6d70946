"""Request parsing for every blueprint: 400 (not 422) with per-field details, and JSON read so
that every value reaches a field that can name it: a JSON float stays distinguishable from an
integer, NaN and Infinity are refused, an integer too long to be any field's value arrives as a
number no field accepts (instead of failing Python's int conversion), nesting is bounded, and an
object that gives a key twice is refused (parsers disagree on which value counts)."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Request, current_app, request
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from creditapp.api import openapi
from creditapp.errors import ValidationFailed
from creditapp.ids import NOT_AN_ID, parse_id

# Deeper than any request of ours; far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 32
# Longer integers than any field takes (ids, counts and amounts all fit in 19 digits).
MAX_INTEGER_DIGITS = 30


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _integer(digits: str) -> int | Decimal:
    return int(digits) if len(digits.lstrip("-")) <= MAX_INTEGER_DIGITS else Decimal(digits)


def _decimal(text: str) -> Decimal:
    """A JSON number with a fraction or an exponent. Decimal refuses an exponent beyond its
    range (`1e99999999999999999999`): the body is malformed, not the service."""
    try:
        return Decimal(text)
    except ArithmeticError as error:
        raise ValidationFailed(
            "The JSON body has a number beyond any range.",
            details={"body": [f"The number {text[:40]} cannot be read."]},
        ) from error


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different. Python keeps the last value of a repeated
    key, other parsers (a proxy, an audit tool) the first: the request would mean one thing
    here and another there."""
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    counts = Counter(key for key, _value in pairs)
    raise ValidationFailed(
        "The JSON body gives a key more than once.",
        details={
            key: ["Given more than once in the same object."]
            for key, count in counts.items()
            if count > 1
        },
    )


def _depth(document: Any) -> int:
    deepest = 0
    pending = [(document, 1)]
    while pending:  # a loop, not recursion: depth is the client's to choose
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)
    return deepest


def load_json(raw: bytes) -> Any:
    """The body's document. Floats arrive as Decimal, so that amounts can refuse them."""
    too_deep = ValidationFailed(
        "The JSON body is nested too deeply.",
        details={"body": [f"Nested deeper than {MAX_JSON_DEPTH} levels."]},
    )
    try:
        document = json.loads(
            raw,
            object_pairs_hook=_object,
            parse_float=_decimal,
            parse_int=_integer,
            parse_constant=_refuse_constant,
        )
    except RecursionError as error:
        raise too_deep from error
    if _depth(document) > MAX_JSON_DEPTH:
        raise too_deep
    return document


class RequestParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400
    # An unknown query parameter is most often a typo ("limt"): say so instead of ignoring it.
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": ma.RAISE}

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        return load_json(req.get_data(cache=True))


def _query_as_declared() -> None:
    """A query parameter is given once, and only to an operation that takes it. The parser
    refuses one its operation's schema does not name; an operation without query arguments
    has no schema, and `?team_id=` there was ignored (the caller read their own balance for a
    team's). A repeated one was read as its first, where another reader takes the last."""
    if not request.args:
        return
    repeated = [name for name, values in request.args.lists() if len(values) > 1]
    if repeated:
        raise ValidationFailed(details={name: ["Given more than once."] for name in repeated})
    view = current_app.view_functions.get(request.endpoint or "")
    declared = getattr(view, "_apidoc", {}).get("arguments") or {}
    if not any(argument["in"] == "query" for argument in declared.get("parameters", [])):
        raise ValidationFailed(details={name: ["Unknown field."] for name in request.args})


class Blueprint(flask_smorest.Blueprint):
    """Every view's blueprint: requests parsed as above, and OpenAPI operations completed from
    what the views declare (`creditapp.api.openapi`)."""

    ARGUMENTS_PARSER = RequestParser()

    def __init__(self, *args: Any, query_checked: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(openapi.document_operation)
        if query_checked:
            self.before_request(_query_as_declared)

    def arguments(self, schema: Any, **kwargs: Any) -> Any:
        """As flask-smorest's, with a schema class made an instance once, here: webargs makes
        one from a class on every request, and a marshmallow schema costs more to make than to
        load a request with (its fields are copied). Loading does not change a schema."""
        return super().arguments(schema() if isinstance(schema, type) else schema, **kwargs)

    def add_url_rule(
        self, rule: str, endpoint: str | None = None, view_func: Any = None, **options: Any
    ) -> None:
        if "<" in rule and view_func is not None:  # an id in the path: malformed 400, unknown 404
            view_func = openapi.declare(view_func, errors=(400, 404))
        super().add_url_rule(rule, endpoint, view_func, **options)


def path_id(value: str, name: str) -> int:
    """An id from the URL path; a malformed one is a 400 naming the parameter."""
    parsed = parse_id(value)
    if parsed is None:
        raise ValidationFailed(details={name: [NOT_AN_ID]})
    return parsed
