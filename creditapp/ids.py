"""Ids: whole numbers inside, strings of 1 to 18 ASCII digits on the wire (paths, bodies,
queries, the access token's `sub`); 18 digits always fit the BIGINT columns."""

from __future__ import annotations

import re

NOT_AN_ID = "Not a valid id."
# Not `str.isdigit`: it takes superscripts and other scripts' digits, which `int` reads as
# another number or refuses.
_WIRE_ID = re.compile(r"[0-9]{1,18}")


def parse_id(text: object) -> int | None:
    """The id `text` spells, or None when it is not one."""
    if isinstance(text, str) and _WIRE_ID.fullmatch(text):
        return int(text)
    return None
