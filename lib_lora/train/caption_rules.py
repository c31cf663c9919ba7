"""Caption rules, pure and seeded: prefix/suffix, shuffle with kept tokens, caption and tag dropout, host escaping.

The semantics are sd-scripts' (`process_caption`): prefix and suffix are joined with a space; a caption is
dropped whole with `caption_dropout_rate`, or on every n-th epoch; otherwise, when shuffling or tag dropout is
on, the caption is split at `caption_separator`, the first `keep_tokens` tags (or everything before
`keep_tokens_separator`, and after a second one) stay in place, the rest is shuffled and each of its tags dropped
with `caption_tag_dropout_rate`, and the tags are joined with ", ". Epochs are counted from 0 here (sd-scripts
counts from 1), so "every n-th epoch" is epoch index n-1, 2n-1, ...
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data_config import DataConfig

EMPHASIS_HOSTS = frozenset({"a1111", "forge"})
"""Host kinds whose prompt parser reads ( ) [ ] as emphasis, so literal brackets in captions must be escaped."""

_UNESCAPED_BRACKET = re.compile(r"(?<!\\)([()\[\]])")
_ESCAPED_BRACKET = re.compile(r"\\([()\[\]])")


@dataclass(frozen=True)
class CaptionRules:
    """The caption options of a DataConfig (same names without the `caption_` prefix where it repeats)."""

    prefix: str | None = None
    suffix: str | None = None
    shuffle: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    separator: str = ","
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0

    @classmethod
    def from_config(cls, config: DataConfig) -> CaptionRules:
        return cls(
            prefix=config.caption_prefix,
            suffix=config.caption_suffix,
            shuffle=config.shuffle_caption,
            keep_tokens=config.keep_tokens,
            keep_tokens_separator=config.keep_tokens_separator,
            separator=config.caption_separator,
            dropout_rate=config.caption_dropout_rate,
            dropout_every_n_epochs=config.caption_dropout_every_n_epochs,
            tag_dropout_rate=config.caption_tag_dropout_rate,
        )

    def varying_options(self) -> list[str]:
        """The DataConfig options (sd-scripts names) set here that make a caption differ between uses."""
        options = {
            "shuffle_caption": self.shuffle,
            "caption_dropout_rate": self.dropout_rate > 0,
            "caption_dropout_every_n_epochs": self.dropout_every_n_epochs > 0,
            "caption_tag_dropout_rate": self.tag_dropout_rate > 0,
        }
        return [name for name, on in options.items() if on]


def split_tags(text: str, separator: str) -> list[str]:
    """The non-empty, stripped tags of `text`."""
    return [tag.strip() for tag in text.split(separator) if tag.strip()]


def _fixed_and_flexible(caption: str, rules: CaptionRules) -> tuple[list[str], list[str], list[str]]:
    """(leading fixed tags, tags that may move or drop, trailing fixed tags)."""
    marker = rules.keep_tokens_separator
    if marker and marker in caption:
        head, rest = caption.split(marker, 1)
        rest, tail = rest.split(marker, 1) if marker in rest else (rest, "")
        return (split_tags(head, rules.separator), split_tags(rest, rules.separator),
                split_tags(tail, rules.separator))
    tags = split_tags(caption, rules.separator)
    return tags[: rules.keep_tokens], tags[rules.keep_tokens:], []


def process_caption(caption: str, rules: CaptionRules, rng: random.Random, *, epoch: int) -> str:
    """This use's caption under `rules`; all randomness is drawn from `rng`, so a seeded rng repeats it."""
    if rules.prefix:
        caption = f"{rules.prefix} {caption}"
    if rules.suffix:
        caption = f"{caption} {rules.suffix}"
    dropped = rules.dropout_rate > 0 and rng.random() < rules.dropout_rate
    if dropped or (rules.dropout_every_n_epochs > 0 and (epoch + 1) % rules.dropout_every_n_epochs == 0):
        return ""
    marked = bool(rules.keep_tokens_separator) and rules.keep_tokens_separator in caption
    if not (rules.shuffle or rules.tag_dropout_rate > 0 or marked):
        return caption
    # sd-scripts leaves the marker in the text when nothing moves; it is a marker, not a word to learn, so a
    # marked caption is always split and rejoined.
    head, flexible, tail = _fixed_and_flexible(caption, rules)
    if rules.shuffle:
        rng.shuffle(flexible)
    if rules.tag_dropout_rate > 0:
        flexible = [tag for tag in flexible if rng.random() >= rules.tag_dropout_rate]
    return ", ".join(head + flexible + tail)


def escape_emphasis(text: str) -> str:
    r"""Escape ( ) [ ] so an emphasis-parsing host reads them literally; `\(` is left as it is (already escaped)."""
    return _UNESCAPED_BRACKET.sub(r"\\\1", text)


def unescape_emphasis(text: str) -> str:
    r"""`\(` → `(` etc., for hosts that pass text to the tokenizer as it is."""
    return _ESCAPED_BRACKET.sub(r"\1", text)


def caption_for_host(text: str, host_kind: str) -> str:
    """The caption as `host.encode_prompts` must receive it so that its text encoder sees the tags literally."""
    return escape_emphasis(text) if host_kind in EMPHASIS_HOSTS else unescape_emphasis(text)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """sd-scripts' ss_tag_frequency for one folder: comma-split, stripped, lower-cased tag → count."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tag.lower() for tag in split_tags(caption, ","))
    return dict(counts)
