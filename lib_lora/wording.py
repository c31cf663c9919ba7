"""How the core and the UI word a count of things, so every report says it the same way."""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """"1 step", "2 steps", "0 steps" (English -s plural; pass words that take it)."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
