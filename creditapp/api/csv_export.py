"""CSV answers of list endpoints (`?format=csv`, or `Accept: text/csv`), streamed row by row so
that a year of records never sits in memory."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response, request, stream_with_context
from marshmallow import validate

from creditapp.api.schemas import Text

CSV = "text/csv; charset=utf-8"
CHUNK_CHARS = 64 * 1024
DESCRIPTION = (
    "With `format=csv` or `Accept: text/csv`: the same rows as CSV, a header first; a text cell"
    " a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, a tab or a carriage return"
    " first, and not a number) starts with `'`."
)
# What a spreadsheet reads as the start of a formula (CSV injection), and what is only a number.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def format_field() -> Text:
    return Text(
        load_default=None,
        max_length=4,
        validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "`csv` for CSV (as `Accept: text/csv`); JSON by default"},
    )


def wanted(args: dict[str, Any]) -> bool:
    """Whether the request asks for CSV: by `format`, else by its Accept header."""
    if args["format"] is not None:
        return bool(args["format"] == "csv")
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv"


def response(filename: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Response:
    """`rows` as a CSV download, written as they are read, about 64 KiB at a time."""

    def chunks() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(value) for value in row])
            if buffer.tell() >= CHUNK_CHARS:
                yield _drain(buffer)
        yield _drain(buffer)

    answer = Response(stream_with_context(chunks()), content_type=CSV)
    answer.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return answer


def _cell(value: Any) -> Any:
    """A text a spreadsheet would run as a formula, made text ("'" first): an email or a name
    is someone's choice, and opening the export must not run it. Numbers are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
