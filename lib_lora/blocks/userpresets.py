"""The user's preset file (LBW's `NAME:v1,...,vN` lines): add, replace or delete one preset, keep every other line.

Pure text functions (`with_preset_line`, `without_preset_lines`) and their file versions, which write atomically.
A line belongs to a preset when its name (spaces removed, as LBW reads it) matches and its length gives the same
family; comments, blank lines and other users' lines are kept byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_atomically
from ..errors import BlockWeightError
from ..wording import echo
from .presets import FAMILY_TITLES, Preset, PresetBook, family_of_length, read_preset_file

__all__ = [
    "delete_user_preset",
    "format_preset_line",
    "load_presets",
    "read_user_text",
    "save_user_preset",
    "with_preset_line",
    "without_preset_lines",
]


def format_preset_line(name: str, values: Sequence[float]) -> str:
    """`NAME:v1,...,vN` for a valid preset (name and length checked by `Preset`)."""
    vector = tuple(float(v) for v in values)
    family = family_of_length(len(vector))
    if family is None:
        raise BlockWeightError(f"preset {echo(name)}: {len(vector)} values is no block-weight format")
    Preset(name, {family: vector})
    return f"{name}:{','.join(f'{v:g}' for v in vector)}"


def _line_key(line: str) -> tuple[str, str | None] | None:
    """(name, family) of a preset line, or None for comments, blank and unreadable lines."""
    body = line.split("#", 1)[0].strip()
    name, colon, values = body.partition(":")
    if not colon:
        return None
    return name.replace(" ", ""), family_of_length(values.count(",") + 1)


def with_preset_line(text: str, name: str, values: Sequence[float]) -> tuple[str, bool]:
    """`text` with preset `name` set to `values` for their family: the first such line replaced (later ones
    dropped, since the last would win) or a line appended; returns (new text, whether one was replaced)."""
    new_line = format_preset_line(name, values)
    family = family_of_length(len(values))
    lines = text.splitlines(keepends=True)
    result: list[str] = []
    replaced = False
    for line in lines:
        if _line_key(line) == (name, family):
            if not replaced:
                result.append(new_line + ("\n" if line.endswith("\n") else ""))
                replaced = True
            continue
        result.append(line)
    if not replaced:
        if result and not result[-1].endswith("\n"):
            result[-1] += "\n"
        result.append(new_line + "\n")
    return "".join(result), replaced


def without_preset_lines(text: str, name: str, family: str) -> tuple[str, int]:
    """`text` without the lines of preset `name` for `family`; returns (new text, lines removed)."""
    kept = []
    removed = 0
    for line in text.splitlines(keepends=True):
        if _line_key(line) == (name, family):
            removed += 1
        else:
            kept.append(line)
    return "".join(kept), removed


def read_user_text(path: Path) -> str:
    """The file's text, or "" when it does not exist; BlockWeightError when it cannot be read or is too large."""
    return read_preset_file(Path(path), missing_ok=True)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [text.encode("utf-8")])
    except OSError as error:
        raise BlockWeightError(f"cannot write preset file {path}: {error.strerror or error}") from error


def load_presets(path: Path) -> PresetBook:
    """The built-in presets with the user's file (if any) merged over them; a broken file raises BlockWeightError."""
    book = PresetBook.builtin()
    return book.merge(PresetBook.from_file(path)) if Path(path).is_file() else book


def save_user_preset(path: Path, name: str, values: Sequence[float]) -> bool:
    """Set preset `name` in the user's file (atomically; the file must parse before and after); True if replaced."""
    text = read_user_text(path)
    PresetBook.parse_preset_text(text, source=str(path))  # never rewrite a file we cannot read back
    new_text, replaced = with_preset_line(text, name, values)
    PresetBook.parse_preset_text(new_text, source=str(path))
    _write(path, new_text)
    return replaced


def delete_user_preset(path: Path, name: str, family: str) -> int:
    """Remove preset `name`'s `family` lines from the user's file (atomically); BlockWeightError if it has none."""
    text = read_user_text(path)
    new_text, removed = without_preset_lines(text, name, family)
    if not removed:
        raise BlockWeightError(
            f"{path} has no {FAMILY_TITLES.get(family, family)} line for {echo(name)}; "
            "built-in presets cannot be deleted"
        )
    _write(path, new_text)
    return removed
