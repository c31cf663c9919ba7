"""From model scores to a caption: the tagging options, thresholds or MCut per category, and the merge.

`TaggerOptions` validates itself (`OPTION_HELP` is the one text per option that the CLI and the Dataset tab
show), `tags_from_scores` is pure (thresholds or MCut per category, rating, exclude, max tags, formatting) over
the model's `tagger.TagLabels`, and `merge_caption` applies the existing-caption policy and the trigger words.
Merging is idempotent: merging the same tags into its own result gives that result again (so a resumed run may
count a caption holding what it would write as done).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ...errors import LoraStudioError
from ..errors import DatasetError
from ..folder import validate_caption_ext
from ..tags import escape_brackets, join_tags, split_tags, underscores_to_spaces, unescape_brackets

if TYPE_CHECKING:
    from .tagger import TagLabels

__all__ = [
    "CHARACTER",
    "EXISTING_POLICIES",
    "GENERAL",
    "OPTION_HELP",
    "RATING",
    "RUN_HELP",
    "ExistingPolicy",
    "TaggerOptionError",
    "TaggerOptions",
    "mcut_threshold",
    "merge_caption",
    "tags_from_scores",
]

RATING, GENERAL, CHARACTER = 9, 0, 4
"""selected_tags.csv categories."""
CHARACTER_MCUT_FLOOR = 0.15
EXISTING_POLICIES = ("skip", "append", "prepend", "overwrite")
ExistingPolicy = Literal["skip", "append", "prepend", "overwrite"]

OPTION_HELP: dict[str, str] = {
    "general_threshold": "keep a general tag when its score is above this (0-1; official default 0.35)",
    "character_threshold": "keep a character tag when its score is above this (0-1; official default 0.85)",
    "general_mcut": "choose the general threshold per image at the largest gap between scores (MCut)",
    "character_mcut": "choose the character threshold per image by MCut (never below 0.15)",
    "include_rating": "put the rating tag (general, sensitive, questionable, explicit) first",
    "max_tags": "keep at most this many character + general tags, the highest scores first (0: no limit)",
    "exclude": "tags never written, comma-separated (underscores or spaces, any case)",
    "underscores_to_spaces": "write long_hair as long hair (emoticons such as ^_^ keep their underscore)",
    "escape_brackets": r"write ( ) as \( \) so a prompt reads them literally (leave off for training captions)",
    "trigger": "words put first in every caption, once, comma-separated (e.g. your LoRA's trigger word)",
    "existing": "an image that already has a caption: skip it (default, not even decoded), append or prepend "
    "the new tags (no duplicates), or overwrite it (the old caption is backed up)",
    "caption_ext": "caption file extension (default .txt)",
    "recursive": "also tag the images in subfolders",
    "batch_size": "images per model run: auto (chosen per execution provider) or a number",
}



RUN_HELP: dict[str, str] = {
    "resume": "a run that was stopped or crashed continues where it stopped when started again with the same "
    "model and options: the images it tagged are not tagged again (its record is kept in the dataset folder's "
    ".lora_studio_tagging until the run finishes)",
    "processes": "under a launcher (accelerate launch -m lib_lora tag …, or torchrun --nproc_per_node N -m lib_lora "
    "tag …) the processes share the folder, each tagging every N-th image by path on its own GPU and writing "
    "those captions: the captions are the same as one process's",
}
"""What a tagging run does beyond the options, in the words the CLI's help and the Dataset tab both show."""


class TaggerOptionError(LoraStudioError):
    """A tagging option has a bad value; the message names the option and the value."""


@dataclass(frozen=True)
class TaggerOptions:
    """How scores become a caption and which captions are written; validates itself (OPTION_HELP explains)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    general_mcut: bool = False
    character_mcut: bool = False
    include_rating: bool = False
    max_tags: int = 0
    exclude: tuple[str, ...] = ()
    underscores_to_spaces: bool = True
    escape_brackets: bool = False
    trigger: tuple[str, ...] = ()
    existing: ExistingPolicy = "skip"
    caption_ext: str = ".txt"
    recursive: bool = False
    batch_size: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        for name in ("exclude", "trigger"):  # a comma-separated text is accepted and split
            value = getattr(self, name)
            tags = split_tags(value) if isinstance(value, str) else [str(t).strip() for t in value]
            object.__setattr__(self, name, tuple(t for t in tags if t))
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise TaggerOptionError(f"{name} must be a number from 0 to 1, got {value!r}")
        if isinstance(self.max_tags, bool) or not isinstance(self.max_tags, int) or self.max_tags < 0:
            raise TaggerOptionError(f"max_tags must be a whole number >= 0 (0: no limit), got {self.max_tags!r}")
        if self.existing not in EXISTING_POLICIES:
            raise TaggerOptionError(f"existing must be one of {', '.join(EXISTING_POLICIES)}, got {self.existing!r}")
        try:
            validate_caption_ext(self.caption_ext)
        except DatasetError as error:
            raise TaggerOptionError(f"caption_ext: {error}") from None
        batch = self.batch_size
        if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise TaggerOptionError(f"batch_size must be 'auto' or a whole number >= 1, got {batch!r}")


def mcut_threshold(probs: np.ndarray) -> float:
    """MCut: the midpoint of the largest gap between neighbouring sorted scores (needs at least two)."""
    ordered = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if ordered.size < 2:
        raise ValueError(f"MCut needs at least two scores, got {ordered.size}")
    t = int(np.argmax(ordered[:-1] - ordered[1:]))
    return float((ordered[t] + ordered[t + 1]) / 2)


def _tag_key(tag: str) -> str:
    """What makes two spellings the same tag: case, underscores vs spaces and bracket escapes do not count."""
    return unescape_brackets(tag.strip().lower()).replace("_", " ")


def _picked(scores: np.ndarray, labels: TagLabels, category: int, threshold: float, mcut: bool,
            floor: float = 0.0) -> np.ndarray:
    """Indices of one category kept by the threshold (or MCut), as the official tagger: score > threshold."""
    index = np.flatnonzero(labels.categories == category)
    probs = scores[index]
    if mcut and index.size >= 2:
        threshold = max(floor, mcut_threshold(probs))
    return index[probs > threshold]


def tags_from_scores(scores: np.ndarray, labels: TagLabels, options: TaggerOptions) -> list[str]:
    """The caption tags one image's scores imply: [rating,] characters, then general tags, each by score."""
    scores = np.asarray(scores)
    if scores.shape != (len(labels.names),):
        raise ValueError(f"expected {len(labels.names)} scores, got shape {scores.shape}")
    excluded = {_tag_key(t) for t in options.exclude}
    chosen = [
        i for i in np.concatenate([
            _picked(scores, labels, CHARACTER, options.character_threshold, options.character_mcut,
                    CHARACTER_MCUT_FLOOR),
            _picked(scores, labels, GENERAL, options.general_threshold, options.general_mcut),
        ]).tolist()
        if _tag_key(labels.names[i]) not in excluded
    ]
    chosen.sort(key=lambda i: -scores[i])  # stable: equal scores keep the tag list's order
    if options.max_tags:
        chosen = chosen[: options.max_tags]
    chosen.sort(key=lambda i: labels.categories[i] != CHARACTER)  # characters first, by score within each
    if options.include_rating:
        ratings = np.flatnonzero(labels.categories == RATING)
        if ratings.size:
            best = int(ratings[np.argmax(scores[ratings])])
            if _tag_key(labels.names[best]) not in excluded:
                chosen.insert(0, best)
    return [_format(labels.names[i], options) for i in chosen]


def _format(tag: str, options: TaggerOptions) -> str:
    if options.underscores_to_spaces:
        tag = underscores_to_spaces(tag)
    if options.escape_brackets:
        tag = escape_brackets(tag)
    return tag


def merge_caption(new_tags: Sequence[str], existing: str | None, options: TaggerOptions) -> str:
    """The caption to write: trigger words once, then new and existing tags per `options.existing`, no duplicates."""
    old = split_tags(existing) if existing else []
    if options.existing == "append":
        body = [*old, *new_tags]
    elif options.existing == "prepend":
        body = [*new_tags, *old]
    else:  # overwrite, or skip (called only for images without a caption)
        body = list(new_tags)
    seen: set[str] = set()
    result: list[str] = []
    for tag in (*options.trigger, *body):
        key = _tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            result.append(tag)
    return join_tags(result)
