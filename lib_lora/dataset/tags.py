"""Pure tag operations on comma-separated captions: split/join, edits, filters, frequency, bracket escaping.

A caption is a list of tags separated by commas (line breaks count as separators too); split_tags trims
each tag and collapses runs of whitespace, drops empty ones and keeps the user's order. Every edit is a frozen
dataclass (`TagEdit`) with `apply(tags) -> tags` and a `description`; `apply_edit` runs one over many captions
and returns only the ones it changed, which is what `history.EditHistory` records for undo/redo.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from .errors import TagOperationError

Key = TypeVar("Key", bound=Hashable)

SEPARATOR = ", "
"""What join_tags puts between tags (sd-scripts' and the taggers' caption separator)."""

KAOMOJI_TAGS: tuple[str, ...] = (
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||", ";_;",
)
"""Emoticon tags whose underscore is part of the face (the WD14 taggers' list, plus ";_;"): kept as they are."""

_SPLIT = re.compile(r"[,\n\r]")
_WHITESPACE = re.compile(r"\s+")
_ODD_WHITESPACE = re.compile(r"[^\S \n\r]|  ")
"""Whitespace a tag's normalisation would change beyond strip(): tabs and other spaces, or two spaces in a row."""
_ESCAPE = re.compile(r"([\\()])")
_UNESCAPE = re.compile(r"\\([\\()])")


# --- text <-> tags -------------------------------------------------------------------------------------------


def normalise_tag(tag: str) -> str:
    """The tag trimmed, with each run of whitespace made one space."""
    return _WHITESPACE.sub(" ", tag).strip()


def _joined(text: str) -> bool:
    """Whether `text` is exactly join_tags(split_tags(text)): no whitespace but single spaces (isprintable rules out
    every other space and line break), each comma followed by one space, no space before a comma, nothing blank at
    either end. Only str methods, so a caption is checked at C speed."""
    return (text.isprintable() and "  " not in text and " ," not in text and text.count(",") == text.count(", ")
            and not text.startswith((" ", ",")) and not text.endswith(" "))


def split_tags(text: str) -> list[str]:
    """The caption's tags in order: split on commas and line breaks, whitespace normalised, empty ones dropped."""
    if _joined(text):  # as join_tags writes it (most captions): one C-level split
        return text.split(SEPARATOR) if text else []
    parts = _SPLIT.split(text)
    if _ODD_WHITESPACE.search(text) is None:  # only single spaces: strip() is the whole normalisation
        return [tag for tag in map(str.strip, parts) if tag]
    return [tag for tag in map(normalise_tag, parts) if tag]


def join_tags(tags: Iterable[str]) -> str:
    """The caption text for `tags` (joined with ", ")."""
    return SEPARATOR.join(tags)


def escape_brackets(tag: str) -> str:
    r"""The tag with `\`, `(` and `)` escaped (`\(`), so a WebUI prompt reads the brackets literally."""
    return _ESCAPE.sub(r"\\\1", tag)


def unescape_brackets(tag: str) -> str:
    """Undo escape_brackets: `\\(` -> `(`, `\\)` -> `)`, `\\\\` -> `\\`."""
    return _UNESCAPE.sub(r"\1", tag)


def underscores_to_spaces(tag: str) -> str:
    """`long_hair` -> `long hair`; the emoticon tags of KAOMOJI_TAGS (`^_^`, `>_<`, ...) keep their underscore."""
    return tag if tag in KAOMOJI_TAGS else tag.replace("_", " ")


def tag_frequency(captions: Mapping[object, str] | Iterable[str]) -> list[tuple[str, int]]:
    """(tag, number of captions holding it), most frequent first, ties alphabetical; each caption counts once."""
    texts = captions.values() if isinstance(captions, Mapping) else captions
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(split_tags(text)))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0].casefold(), item[0]))


def normalise_tag_list(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    """Tags given as a caption-like string or an iterable, each normalised; TagOperationError for a bad one."""
    raw = [value] if isinstance(value, str) else list(value)
    tags: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise TagOperationError(f"{what}: expected tag text, got {item!r}")
        parts = split_tags(item)
        if not parts:
            raise TagOperationError(f"{what}: empty tag {item!r}")
        tags.extend(parts)
    if not tags:
        raise TagOperationError(f"{what}: no tags given")
    return tuple(dict.fromkeys(tags))


def require_single_tag(value: str, what: str) -> str:
    """`value` as one normalised tag; TagOperationError if it is empty or holds a comma or line break."""
    tag = normalise_tag(value) if isinstance(value, str) else ""
    if not tag or "," in tag or "\n" in value:
        raise TagOperationError(f"{what}: expected one non-empty tag without commas, got {value!r}")
    return tag


def _quoted(tags: Iterable[str]) -> str:
    return ", ".join(repr(tag) for tag in tags)


# --- edits ---------------------------------------------------------------------------------------------------


class TagEdit:
    """An operation on one caption's tag list; apply never mutates its argument."""

    def apply(self, tags: list[str]) -> list[str]:
        raise NotImplementedError

    @property
    def description(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AddTags(TagEdit):
    """Add tags missing from the caption at the front, the back or before index `position` (present ones stay)."""

    tags: tuple[str, ...]
    position: Literal["front", "back"] | int = "back"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", normalise_tag_list(self.tags, "add"))
        valid_index = isinstance(self.position, int) and not isinstance(self.position, bool) and self.position >= 0
        if self.position not in ("front", "back") and not valid_index:
            raise TagOperationError(f"add: position must be 'front', 'back' or an index >= 0, got {self.position!r}")

    def apply(self, tags: list[str]) -> list[str]:
        missing = [tag for tag in self.tags if tag not in tags]
        position = self.position
        index = 0 if position == "front" else len(tags) if position == "back" else min(int(position), len(tags))
        return tags[:index] + missing + tags[index:]

    @property
    def description(self) -> str:
        where = f"at {self.position}" if isinstance(self.position, str) else f"at position {self.position}"
        return f"add {_quoted(self.tags)} {where}"


@dataclass(frozen=True)
class RemoveTags(TagEdit):
    """Remove every occurrence of the given tags."""

    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", normalise_tag_list(self.tags, "remove"))

    def apply(self, tags: list[str]) -> list[str]:
        unwanted = set(self.tags)
        return [tag for tag in tags if tag not in unwanted]

    @property
    def description(self) -> str:
        return f"remove {_quoted(self.tags)}"


def _merge_changed(pairs: list[tuple[str, bool]]) -> list[str]:
    """Tags from (tag, changed) pairs, dropping a changed tag that duplicates another one (the first is kept)."""
    unchanged = {tag for tag, changed in pairs if not changed}
    result: list[str] = []
    seen: set[str] = set()
    for tag, changed in pairs:
        if changed and (tag in unchanged or tag in seen):
            continue
        result.append(tag)
        seen.add(tag)
    return result


@dataclass(frozen=True)
class RenameTag(TagEdit):
    """Rename a whole tag (`aiming at viewer` -> `aav`); a rename onto a tag already present merges the two."""

    old: str
    new: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "old", require_single_tag(self.old, "rename: old tag"))
        object.__setattr__(self, "new", require_single_tag(self.new, "rename: new tag"))

    def apply(self, tags: list[str]) -> list[str]:
        if self.old not in tags:
            return list(tags)
        return _merge_changed([(self.new, True) if tag == self.old else (tag, False) for tag in tags])

    @property
    def description(self) -> str:
        return f"rename {self.old!r} to {self.new!r}"


@dataclass(frozen=True)
class ReplaceText(TagEdit):
    """Replace `find` by `replacement` inside each tag (scope "tag") or in the whole caption (scope "caption").

    With regex=True `find` is a Python regular expression and `replacement` may use `\\1` / `\\g<name>`.
    Tags emptied by the replacement are dropped; duplicates it creates are merged, the first kept.
    """

    find: str
    replacement: str
    regex: bool = False
    scope: Literal["tag", "caption"] = "tag"
    ignore_case: bool = False
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.find, str) or not self.find:
            raise TagOperationError("replace: the text to find is empty")
        if not isinstance(self.replacement, str):
            raise TagOperationError(f"replace: the replacement must be text, got {self.replacement!r}")
        if self.scope not in ("tag", "caption"):
            raise TagOperationError(f"replace: scope must be 'tag' or 'caption', got {self.scope!r}")
        source = self.find if self.regex else re.escape(self.find)
        try:
            pattern = re.compile(source, re.IGNORECASE if self.ignore_case else 0)
            if self.regex:
                pattern.sub(self.replacement, "")  # parses the template: bad group references fail here
        except (re.error, IndexError) as error:
            raise TagOperationError(
                f"replace: invalid regular expression {self.find!r} or replacement {self.replacement!r}: {error}"
            ) from error
        object.__setattr__(self, "_pattern", pattern)

    def _sub(self, text: str) -> str:
        try:
            if self.regex:
                return self._pattern.sub(self.replacement, text)
            return self._pattern.sub(lambda _match: self.replacement, text)
        except (re.error, IndexError) as error:
            raise TagOperationError(f"replace: invalid replacement {self.replacement!r}: {error}") from error

    def apply(self, tags: list[str]) -> list[str]:
        if self.scope == "caption":
            text = join_tags(tags)
            replaced = self._sub(text)
            return list(tags) if replaced == text else _merge_changed(
                [(tag, tag not in tags) for tag in split_tags(replaced)]
            )
        pairs: list[tuple[str, bool]] = []
        for tag in tags:
            replaced = self._sub(tag)
            if replaced == tag:
                pairs.append((tag, False))
            else:
                pairs.extend((part, True) for part in split_tags(replaced))
        return _merge_changed(pairs)

    @property
    def description(self) -> str:
        kind = "regex" if self.regex else "text"
        where = "in each tag" if self.scope == "tag" else "in the whole caption"
        return f"replace {kind} {self.find!r} with {self.replacement!r} {where}"


@dataclass(frozen=True)
class Deduplicate(TagEdit):
    """Keep the first occurrence of each tag."""

    def apply(self, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))

    @property
    def description(self) -> str:
        return "remove duplicate tags"


@dataclass(frozen=True)
class SortTags(TagEdit):
    """Sort the tags after the first `keep_tokens` (which stay in place), alphabetically or by frequency.

    `frequencies` ((tag, count) pairs, e.g. from tag_frequency) is needed for order="frequency": most frequent
    first, ties alphabetical, unknown tags count 0. `reverse` flips the order of the sorted part.
    """

    order: Literal["alphabetical", "frequency"] = "alphabetical"
    keep_tokens: int = 0
    frequencies: tuple[tuple[str, int], ...] = ()
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.order not in ("alphabetical", "frequency"):
            raise TagOperationError(f"sort: order must be 'alphabetical' or 'frequency', got {self.order!r}")
        if isinstance(self.keep_tokens, bool) or not isinstance(self.keep_tokens, int) or self.keep_tokens < 0:
            raise TagOperationError(f"sort: keep_tokens must be a whole number >= 0, got {self.keep_tokens!r}")
        object.__setattr__(self, "frequencies", tuple((str(tag), int(count)) for tag, count in self.frequencies))

    def apply(self, tags: list[str]) -> list[str]:
        kept, rest = tags[: self.keep_tokens], tags[self.keep_tokens :]
        if self.order == "frequency":
            counts = dict(self.frequencies)
            ordered = sorted(rest, key=lambda tag: (-counts.get(tag, 0), tag.casefold(), tag))
        else:
            ordered = sorted(rest, key=lambda tag: (tag.casefold(), tag))
        return [*kept, *(reversed(ordered) if self.reverse else ordered)]

    @property
    def description(self) -> str:
        kept = f", keeping the first {self.keep_tokens}" if self.keep_tokens else ""
        return f"sort tags {'by frequency' if self.order == 'frequency' else 'alphabetically'}{kept}"


@dataclass(frozen=True)
class MoveToFront(TagEdit):
    """Move the given tags, where present, to the front in the order given."""

    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", normalise_tag_list(self.tags, "move to front"))

    def apply(self, tags: list[str]) -> list[str]:
        front = [tag for tag in self.tags if tag in tags]
        moved = set(front)
        return [*front, *(tag for tag in tags if tag not in moved)]

    @property
    def description(self) -> str:
        return f"move {_quoted(self.tags)} to the front"


# --- selection and batch application -------------------------------------------------------------------------


@dataclass(frozen=True)
class TagFilter:
    """Which captions to show or edit: all / any of `include`, and none / not all of `exclude`.

    include_mode "all" (AND) or "any" (OR); exclude_mode "any" rejects a caption holding any excluded tag,
    "all" only one holding all of them. Empty lists do not filter.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_mode: Literal["all", "any"] = "all"
    exclude_mode: Literal["all", "any"] = "any"

    def __post_init__(self) -> None:
        for name in ("include_mode", "exclude_mode"):
            if getattr(self, name) not in ("all", "any"):
                raise TagOperationError(f"filter: {name} must be 'all' or 'any', got {getattr(self, name)!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, normalise_tag_list(value, f"filter {name}") if value else ())

    def matches(self, tags: Iterable[str]) -> bool:
        present = set(tags)
        combine = {"all": all, "any": any}
        if self.include and not combine[self.include_mode](tag in present for tag in self.include):
            return False
        return not (self.exclude and combine[self.exclude_mode](tag in present for tag in self.exclude))


def filter_keys(captions: Mapping[Key, str], tag_filter: TagFilter) -> list[Key]:
    """The keys (in mapping order) whose caption passes `tag_filter`."""
    return [key for key, text in captions.items() if tag_filter.matches(split_tags(text))]


def apply_edit(captions: Mapping[Key, str], edit: TagEdit, keys: Iterable[Key] | None = None) -> dict[Key, str]:
    """New text of each caption (of `keys`, default all) whose tags `edit` changes; unchanged ones are left out."""
    selected = list(captions) if keys is None else list(keys)
    missing = [key for key in selected if key not in captions]
    if missing:
        raise TagOperationError(f"{edit.description}: no caption for {missing[:5]!r}")
    changed: dict[Key, str] = {}
    for key in selected:
        tags = split_tags(captions[key])
        new_tags = edit.apply(tags)
        if new_tags != tags:
            changed[key] = join_tags(new_tags)
    return changed

