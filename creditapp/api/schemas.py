"""Marshmallow fields and schemas shared by the blueprints (they also generate the OpenAPI doc)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from creditapp.ids import NOT_AN_ID, parse_id
from creditapp.metering.usage import TOKEN_COUNTERS
from creditapp.money import AmountError, format_credits, parse_credits
from creditapp.text import BLANK, UNSTORABLE, blank, storable


class Pattern(validate.Regexp):
    """A regular expression the whole value matches: `re.match` lets `$` match before a final
    newline, so `Regexp("^[a-z]+$")` would take "pro\\n" as a second name beside "pro". The
    pattern is documented as written (`^...$`, which JSON Schema reads as whole)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Credits(fields.Field):
    """An amount: micro-credits inside, a credit decimal string on the wire."""

    def __init__(self, *, signed: bool = False, allow_zero: bool = False, **kwargs: Any):
        self.signed = signed
        self.allow_zero = allow_zero
        kwargs["metadata"] = {
            "type": "string",
            "pattern": r"^-?[0-9]+(\.[0-9]{1,6})?$",
            "example": "12.5",
            "description": "credits, at most 6 decimals (a request may send a JSON integer)",
            **kwargs.get("metadata", {}),
        }
        super().__init__(**kwargs)

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else format_credits(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        try:
            return parse_credits(value, signed=self.signed, allow_zero=self.allow_zero)
        except AmountError as error:
            raise ValidationError(str(error)) from error


class Text(fields.String):
    """Every text a request carries: `min_length` to `max_length` characters the database can
    store, and something other than spaces: a chat message, a reason, a
    name of only spaces is refused naming its field. A request that passed here cannot fail
    later on its own text."""

    def __init__(self, *, max_length: int, min_length: int = 1, **kwargs: Any):
        more = kwargs.pop("validate", None)
        extra = [] if more is None else more if isinstance(more, list) else [more]
        super().__init__(
            validate=[validate.Length(min=min_length, max=max_length), *extra], **kwargs
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if not storable(text):
            raise ValidationError(UNSTORABLE)
        if text and blank(text):
            raise ValidationError(BLANK)
        return text


class BoundedList(fields.List):
    """A list of at most `max_items`, refused as a whole when longer, before any item is read:
    a body of tens of thousands of items is one error, not one per item."""

    def __init__(self, item: fields.Field, *, max_items: int, min_items: int = 0, **kwargs: Any):
        self.max_items = max_items
        super().__init__(item, validate=validate.Length(min=min_items, max=max_items), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if isinstance(value, list) and len(value) > self.max_items:
            raise ValidationError(f"Longer than maximum length {self.max_items}.")
        items: list[Any] = super()._deserialize(value, attr, data, **kwargs)
        return items


class Flag(fields.Boolean):
    """A JSON true or false, nothing else (not 1, "yes" or "true")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Count(fields.Integer):
    """A whole number: a JSON integer, or (in a query string) 1-18 ASCII digits, never "+5",
    " 5" or other scripts' digits (the rule of ids)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        parsed = parse_id(value)
        if parsed is None:
            raise ValidationError("Not a valid whole number.")
        return parsed


# Timestamps a request may carry: well inside what datetime arithmetic (a day, a month, a year
# on either side) and both databases can hold.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
OUT_OF_RANGE = "Must be between 1970-01-01 and 9000-01-01."


def in_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment < LATEST:
        raise ValidationError(OUT_OF_RANGE)
    return moment


_ISO_MOMENT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
NOT_A_MOMENT = "Not a date-time: YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS[.ffffff]] and Z or +HH:MM."


class UtcDateTime(fields.DateTime):
    """ISO 8601 timestamps, always UTC with a trailing Z; naive input is read as UTC."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        # Python reads more than ISO 8601's extended form: "20260101", week dates, any
        # character between date and time (a NUL among them). One spelling, or a 400.
        if not isinstance(value, str) or _ISO_MOMENT.fullmatch(value) is None:
            raise ValidationError(NOT_A_MOMENT)
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError as error:  # year 1 or 9999 with an offset
            raise ValidationError(OUT_OF_RANGE) from error
        return in_range(moment)


class Id(fields.Field):
    """Ids are opaque strings on the wire; whole numbers inside."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("metadata", {"type": "string", "example": "42", "description": "an id"})
        super().__init__(**kwargs)

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else str(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        parsed = parse_id(value)
        if parsed is None:
            raise ValidationError(NOT_AN_ID)
        return parsed


def token_counts() -> dict[str, fields.Field]:
    """One whole-number field per token count of a call (for a schema's `Meta.include`)."""
    return {name: fields.Integer() for name in TOKEN_COUNTERS}


def columns(row: Any) -> dict[str, Any]:
    """A mapped object's column values, to dump with extra fields beside them."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def page_of(item: type[Schema]) -> type[Schema]:
    """The shape of every list response: `{"items": [...], "next_cursor": "..." | null}`."""
    return Schema.from_dict(
        {"items": fields.List(fields.Nested(item)), "next_cursor": fields.String(allow_none=True)},
        name=f"{item.__name__.removesuffix('Schema')}PageSchema",
    )


class PageArgs(Schema):
    limit = Count(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = Text(max_length=100, load_default=None)


class AmountsSchema(Schema):
    balance = Credits()
    reserved = Credits()
    available = Credits()


class BalanceSchema(AmountsSchema):
    tier = fields.String()
    last_credit_refresh = UtcDateTime(allow_none=True)
    next_refresh_at = UtcDateTime(allow_none=True)


class GrantSchema(Schema):
    id = Id()
    source = fields.String()
    amount = Credits()
    remaining = Credits()
    expires_at = UtcDateTime(allow_none=True)
    period = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    created_at = UtcDateTime()
    status = fields.String(
        metadata={
            "enum": ["active", "expired", "used_up"],
            "description": "an expired grant's remaining is only what open holds still need",
        }
    )


GrantPageSchema = page_of(GrantSchema)


class TransactionSchema(Schema):
    id = Id()
    type = fields.String()
    amount = Credits()
    balance_after = Credits()
    reference = fields.String(allow_none=True)
    user_id = Id(
        allow_none=True,
        metadata={
            "description": "who caused the entry (on a team's account, the member); null for"
            " what an admin or a job did"
        },
    )
    created_at = UtcDateTime()


TransactionPageSchema = page_of(TransactionSchema)
