"""How the session's messages quote what they name: Markdown code spans and escaped text."""

from __future__ import annotations

import re

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~])")


def escape_markdown(text: str) -> str:
    """`text` with the characters Markdown would interpret backslash-escaped (as the UI's panels escape it)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def code(text: str) -> str:
    """`text` as a Markdown code span (shown literally, so nothing inside is escaped)."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"
