"""Fold a character's physical-feature tags into its trigger word (the seed notes' rule for character LoRAs).

Tags describing the body (hair colour/length/style, eye colour, skin, ears, tail, halo, horns, wings, fangs,
moles, ...) that appear in most images of the character are removed, so the trigger word alone calls them up;
clothing, counts (1girl, solo), directions (looking at viewer) and composition are kept, so they stay
promptable. `data/feature_tags.csv` (tag, category; Danbooru spellings with spaces) says which tags are features.
The user reviews `propose_consolidation`'s list before `consolidate` applies the chosen tags.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import TagOperationError
from .tags import Key, TagEdit, apply_edit, normalise_tag_list, require_single_tag, split_tags, unescape_brackets

FEATURE_TAGS_CSV = Path(__file__).parent / "data" / "feature_tags.csv"


@dataclass(frozen=True)
class ConsolidationProposal:
    """A feature tag found in `count` of the trigger's captions (`share` of them, 0..1)."""

    tag: str
    category: str
    share: float
    count: int


def feature_key(tag: str) -> str:
    """The spelling feature tags are looked up by: brackets unescaped, underscores as spaces, case folded."""
    return unescape_brackets(tag).replace("_", " ").casefold().strip()


@lru_cache(maxsize=4)
def load_feature_tags(path: Path = FEATURE_TAGS_CSV) -> dict[str, str]:
    """feature_key(tag) -> category, read from a `tag,category` CSV file with a header row."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"tag", "category"} <= set(reader.fieldnames):
            raise TagOperationError(f"{path}: expected the columns tag,category, got {reader.fieldnames}")
        return {feature_key(row["tag"]): row["category"] for row in reader if row["tag"].strip()}


def feature_category(tag: str, feature_tags: Mapping[str, str] | None = None) -> str | None:
    """The category of a physical-feature tag (e.g. "hair_color"), None for any other tag."""
    table = load_feature_tags() if feature_tags is None else feature_tags
    return table.get(feature_key(tag))


def propose_consolidation(
    captions: Mapping[Key, str] | Iterable[str],
    trigger: str,
    *,
    min_share: float = 0.5,
    feature_tags: Mapping[str, str] | None = None,
) -> list[ConsolidationProposal]:
    """Feature tags present in at least `min_share` of the captions holding `trigger`, most common first.

    When no caption holds the trigger yet, every caption counts (consolidate adds the trigger to them).
    """
    trigger = require_single_tag(trigger, "consolidate: trigger")
    if not 0 < min_share <= 1:
        raise TagOperationError(f"consolidate: min_share must be in (0, 1], got {min_share!r}")
    table = load_feature_tags() if feature_tags is None else feature_tags
    texts = list(captions.values() if isinstance(captions, Mapping) else captions)
    tag_lists = [split_tags(text) for text in texts]
    with_trigger = [tags for tags in tag_lists if trigger in tags] or tag_lists
    if not with_trigger:
        return []
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for tags in with_trigger:
        keys: dict[str, str] = {}
        for tag in tags:
            key = feature_key(tag)
            if key in table and tag != trigger:
                keys.setdefault(key, tag)
                spellings.setdefault(key, Counter())[tag] += 1
        counts.update(keys.keys())
    proposals = [
        ConsolidationProposal(
            tag=spellings[key].most_common(1)[0][0], category=table[key], share=count / len(with_trigger), count=count
        )
        for key, count in counts.items()
        if count / len(with_trigger) >= min_share
    ]
    return sorted(proposals, key=lambda p: (-p.count, p.category, p.tag))


@dataclass(frozen=True)
class Consolidate(TagEdit):
    """Remove `tags` (any spelling of them) and put `trigger` first, adding it where missing."""

    trigger: str
    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "trigger", require_single_tag(self.trigger, "consolidate: trigger"))
        object.__setattr__(self, "tags", normalise_tag_list(self.tags, "consolidate: tags") if self.tags else ())
        if feature_key(self.trigger) in {feature_key(tag) for tag in self.tags}:
            raise TagOperationError(f"consolidate: the trigger {self.trigger!r} cannot be one of the removed tags")

    def apply(self, tags: list[str]) -> list[str]:
        removed = {feature_key(tag) for tag in self.tags}
        rest = [tag for tag in tags if tag != self.trigger and feature_key(tag) not in removed]
        return [self.trigger, *rest]

    @property
    def description(self) -> str:
        return f"fold {len(self.tags)} feature tag(s) into {self.trigger!r}"


def consolidate(captions: Mapping[Key, str], trigger: str, tags: Iterable[str]) -> dict[Key, str]:
    """New texts of the captions that change when `tags` are folded into `trigger` (see Consolidate)."""
    return apply_edit(captions, Consolidate(trigger, tuple(tags)))
