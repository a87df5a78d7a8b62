"""What counts as a valid string anywhere a user hands us one: task arguments, HTTP bodies,
command-line flags and the pools file all pass through `text_problem`.

A string is stored in Redis, encoded by Lua's cjson, written to the mirror and echoed in
answers. A lone surrogate cannot be encoded as UTF-8 and a control character breaks logs and
shell `export` lines, so both are refused before anything is stored. So are the bidirectional
embedding, override and isolate characters: they reorder how the text around them is shown, so
an owner could be made to read as another one on the dashboard, in `vcm leases` or in a log."""

from __future__ import annotations

import unicodedata
from typing import Any

MAX_TEXT = 253  # a DNS name's length: more than any name or owner here needs
# LRE, RLE, PDF, LRO, RLO and LRI, RLI, FSI, PDI
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def text_problem(value: str, max_len: int = MAX_TEXT) -> str | None:
    """Why `value` is not acceptable text, or None."""
    if len(value) > max_len:
        return f"is longer than {max_len} characters"
    for c in value:
        cat = unicodedata.category(c)
        if cat == "Cs":
            return f"is not valid Unicode text (lone surrogate {ascii(c)})"
        if cat == "Cc":
            return f"must not contain control characters (found {ascii(c)})"
        if c in BIDI_CONTROLS:
            return f"must not contain bidirectional control characters (found {ascii(c)})"
    return None


def shown(value: Any, limit: int = 80) -> str:
    """A value as it can be shown in a message, a log line or JSON: invalid text escaped,
    long text cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return ascii(text) if text_problem(text, limit + 1) else repr(text)


def escaped(name: str, limit: int = 64) -> str:
    """A name that is not valid text, as text: escapes instead of the bad characters."""
    return ascii(name[:limit])[1:-1]


def said(value: Any, limit: int = MAX_TEXT) -> str:
    """A value as text in a message or a log line: cut to `limit` characters, and escaped
    when that holds a lone surrogate, a control or a bidirectional character."""
    text = (value if isinstance(value, str) else str(value))[:limit]
    return escaped(text, limit) if text_problem(text, limit) else text
