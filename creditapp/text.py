"""Text both databases can store: the rule every text from outside meets before it reaches a
query, whether it came in a request's body (`creditapp.api.schemas.Text`) or as a token's claim."""

from __future__ import annotations

import re
import unicodedata

UNSTORABLE = "Text may not contain NUL characters or unpaired surrogates."


def storable(text: str) -> bool:
    """Whether both databases can store `text`: PostgreSQL's text refuses NUL, and UTF-8 (either
    database) has no unpaired surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def made_storable(text: str) -> str:
    """`text` with each character neither database can store (NUL, an unpaired surrogate: a
    str holds paired ones as one character) replaced by U+FFFD, as a UTF-8 decoder replaces
    what it cannot read: for text the service must keep whatever it holds (a provider's reply),
    where a request's text is refused instead."""
    return _UNSTORABLE_CHARACTERS.sub("\ufffd", text)


def is_text(value: object, *, max_length: int, min_length: int = 1) -> bool:
    """Whether `value` is a string of `min_length` to `max_length` characters both databases
    can store: what a request's `Text` field accepts."""
    return isinstance(value, str) and min_length <= len(value) <= max_length and storable(value)


# Characters that show nothing although they are not whitespace: Hangul fillers and the blank
# Braille pattern (besides the invisible format characters, Unicode category Cf).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")
BLANK = "Must contain more than spaces and invisible characters."


def blank(text: str) -> bool:
    """Whether `text` shows nothing: only whitespace (any of Unicode's, as `str.isspace` says),
    invisible format characters (zero-width spaces and joiners, the byte-order mark, ...) and
    fillers. The empty string is blank too."""
    return all(
        char.isspace() or char in _INVISIBLE or unicodedata.category(char) == "Cf" for char in text
    )
