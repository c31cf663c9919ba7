"""How the core and the UI word a count of things and echo what a user typed, so every report says it the same way."""

from __future__ import annotations

import re

ECHO_LIMIT = 200
"""The most characters of a user's input an error message repeats; longer input is cut in the middle."""


def plural(count: int, word: str) -> str:
    """"1 step", "2 steps", "0 steps" (English -s plural; pass words that take it)."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` itself when it has at most `limit` characters, else its start and end around "…" (`limit` in all)."""
    if len(text) <= limit:
        return text
    head = max(1, (limit - 1) * 2 // 3)
    tail = max(0, limit - 1 - head)
    return f"{text[:head]}…{text[len(text) - tail:]}"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A user's value as an error message repeats it: `repr`, and for long text its ends and its length.

    `echo("1,1")` is `'1,1'`; a 600,000-character vector is `'1,1,…,1,1' (600000 characters)`.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{shorten(value, limit)!r} ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return "a number too long to show"
    return text if len(text) <= limit else f"{shorten(text, limit)} ({len(text)} characters)"


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~])")


def escape_markdown(text: str) -> str:
    """`text` with the characters Markdown would interpret backslash-escaped (so paths keep their underscores)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def code(text: str) -> str:
    """`text` as a Markdown code span (shown literally, so nothing inside is escaped)."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"
