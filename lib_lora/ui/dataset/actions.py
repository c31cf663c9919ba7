"""The Dataset tab's inputs turned into session actions: the page script's JSON actions and the batch edits.

The page's script (javascript/lora_studio_dataset.js) writes one JSON object per click into our hidden textbox
`lora_studio_dataset_chip_action`, e.g. `{"op": "remove", "key": "10_x/a.png", "index": 3, "tag": "smile",
"nonce": "7"}`; `run_action` checks it and calls the session. A chip action names the tag as well as its
index, so a click on a page drawn before another edit is refused instead of removing the wrong tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...dataset.editing import DatasetSession, DatasetUIError
from ...dataset.tags import (
    AddTags,
    Deduplicate,
    MoveToFront,
    RemoveTags,
    RenameTag,
    ReplaceText,
    SortTags,
    split_tags,
    tag_frequency,
)

ACTION_OPS = ("select", "remove", "left", "right", "move", "include", "exclude")
ADD_POSITIONS = ("back", "front", "at position")
SORT_ORDERS = ("alphabetical", "frequency")
REPLACE_SCOPES = ("each tag", "whole caption")
INCLUDE_MODES = {"all (AND)": "all", "any (OR)": "any"}
EXCLUDE_MODES = {"any of them": "any", "all of them": "all"}
"""Filter mode labels as the page shows them -> TagFilter's include_mode / exclude_mode."""


def run_action(session: DatasetSession, raw: str | None) -> str | None:
    """Do what one JSON action from the page asks; DatasetUIError for anything malformed (nothing changes)."""
    if not raw or not raw.strip():
        return None
    try:
        action = json.loads(raw)
    except ValueError:
        raise DatasetUIError("the page sent an unreadable action; reload the page") from None
    if not isinstance(action, dict) or action.get("op") not in ACTION_OPS:
        op = action.get("op") if isinstance(action, dict) else action
        raise DatasetUIError(f"the page sent an unknown action {op!r}; reload the page")
    op = action["op"]
    if op == "select":
        return session.select(_text(action, "key"))
    if op in ("include", "exclude"):
        return session.add_to_filter(_text(action, "tag"), exclude=op == "exclude")
    key, index, tag = _text(action, "key"), action.get("index"), _text(action, "tag")
    if op == "remove":
        return session.remove_tag(key, index, tag)
    if op == "move":
        return session.move_tag(key, index, tag, to=action.get("to"))
    return session.move_tag(key, index, tag, step=-1 if op == "left" else 1)


def _text(action: Mapping[str, Any], name: str) -> str:
    value = action.get(name)
    if not isinstance(value, str) or not value:
        raise DatasetUIError(f"the page sent an action without its {name}; reload the page")
    return value


def add_edit(tags: str, position: str, index: Any) -> AddTags:
    """AddTags at the back, the front or before tag number `index` (counted from 1 as the page shows it)."""
    if position == "at position":
        whole = isinstance(index, (int, float)) and not isinstance(index, bool) and float(index).is_integer()
        if not whole or index < 1:
            raise DatasetUIError(f"the position must be a whole number of at least 1, got {index!r}")
        return AddTags(_tags(tags, "add"), int(index) - 1)
    if position not in ("front", "back"):
        raise DatasetUIError(f"add: choose front, back or a position, got {position!r}")
    return AddTags(_tags(tags, "add"), position)  # type: ignore[arg-type]


def remove_edit(tags: str) -> RemoveTags:
    return RemoveTags(_tags(tags, "remove"))


def replace_edit(find: str, replacement: str, regex: bool, scope: str, ignore_case: bool) -> ReplaceText:
    if scope not in REPLACE_SCOPES:
        raise DatasetUIError(f"replace: choose {' or '.join(REPLACE_SCOPES)}, got {scope!r}")
    return ReplaceText(find or "", replacement or "", regex=bool(regex),
                       scope="tag" if scope == "each tag" else "caption", ignore_case=bool(ignore_case))


def rename_edit(old: str, new: str) -> RenameTag:
    return RenameTag(old or "", new or "")


def move_to_front_edit(tags: str) -> MoveToFront:
    return MoveToFront(_tags(tags, "move to front"))


def dedupe_edit() -> Deduplicate:
    return Deduplicate()


def sort_edit(order: str, keep_tokens: Any, reverse: bool, texts: Mapping[str, str]) -> SortTags:
    """SortTags; by frequency over all loaded captions."""
    if order not in SORT_ORDERS:
        raise DatasetUIError(f"sort: choose {' or '.join(SORT_ORDERS)}, got {order!r}")
    keep = int(keep_tokens) if isinstance(keep_tokens, (int, float)) and float(keep_tokens).is_integer() \
        else keep_tokens
    frequencies = tuple(tag_frequency(texts)) if order == "frequency" else ()
    return SortTags(order, keep, frequencies, bool(reverse))  # type: ignore[arg-type]


def _tags(text: str, what: str) -> tuple[str, ...]:
    tags = tuple(split_tags(text or ""))
    if not tags:
        raise DatasetUIError(f"{what}: type the tags, comma-separated")
    return tags

