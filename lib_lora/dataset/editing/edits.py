"""Edits of one caption (chips, typed tags, the raw text) and consolidation into a trigger word.

Each is one undo step of the session's history. A chip names its tag as well as its index, so a click on a page
drawn before another edit acts on the tag it shows, or is refused when that is ambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...wording import escape_markdown, plural
from ..caption_format import normalise_text
from ..consolidate import Consolidate, ConsolidationProposal, propose_consolidation
from ..tags import AddTags, join_tags, split_tags
from .errors import DatasetUIError
from .loading import DatasetLoading


def proposal_label(proposal: ConsolidationProposal) -> str:
    """How a consolidation proposal reads in the check list: tag, category, how many of the captions."""
    return f"{proposal.tag} — {proposal.category}, {proposal.count} ({proposal.share:.0%})"


class CaptionEdits(DatasetLoading):
    """The editor's edits of the selected caption, and folding feature tags into a trigger word."""

    def _chip(self, key: str, index: Any, tag: Any) -> tuple[list[str], int]:
        """The caption's tags and where `tag` is: at `index` as drawn, or, when edits since moved it (quick
        clicks), its one place now; DatasetUIError when it is gone or ambiguous (nothing changes)."""
        self.begin()
        self.item(key)
        tags = self.tags_of(key)
        if not isinstance(index, int) or isinstance(index, bool):
            raise DatasetUIError(f"the page sent a tag position that is not a number: {index!r}")
        if 0 <= index < len(tags) and tags[index] == tag:
            return tags, index
        if tags.count(tag) == 1:
            return tags, tags.index(tag)
        raise DatasetUIError("the caption changed since the tags were drawn; nothing was changed, try again")

    def remove_tag(self, key: str, index: Any, tag: Any) -> str:
        """Remove the chip's tag from one caption."""
        tags, index = self._chip(key, index, tag)
        del tags[index]
        self.record({key: join_tags(tags)}, f"remove {tag!r} from {Path(key).name}")
        return f"Removed **{escape_markdown(tag)}**."

    def move_tag(self, key: str, index: Any, tag: Any, *, to: Any = None, step: int = 0) -> str | None:
        """Move a tag to position `to`, or `step` places (-1: left, +1: right); ends clamp."""
        tags, index = self._chip(key, index, tag)
        if to is None:
            to = index + step
        if not isinstance(to, int) or isinstance(to, bool):
            raise DatasetUIError(f"a tag moves to a position number, got {to!r}")
        target = min(max(to, 0), len(tags) - 1)
        tags.insert(target, tags.pop(index))
        self.record({key: join_tags(tags)}, f"move {tag!r} in {Path(key).name}")
        return None

    def add_tags(self, key: str | None, text: str) -> str:
        """Add the typed tags (comma-separated) at the end of one caption; present ones stay where they are."""
        self.begin()
        if not key:
            raise DatasetUIError("select an image first")
        self.item(key)
        if not split_tags(text or ""):
            raise DatasetUIError("type a tag to add")
        edit = AddTags(tuple(split_tags(text)))
        changed = self.history.apply(self.texts, edit, [key])
        return f"Added to {escape_markdown(Path(key).name)}." if changed else "Already there; nothing changed."

    def set_caption(self, key: str | None, text: str) -> str | None:
        """Replace one caption's text as typed (line breaks normalised); one undo step."""
        self.begin()
        if not key:
            raise DatasetUIError("select an image first")
        self.item(key)
        changed = self.record({key: normalise_text(text or "")}, f"edit the caption of {Path(key).name}")
        return "Caption updated." if changed else None

    def propose(self, trigger: str, min_share: float) -> str:
        """Find the feature tags to fold into `trigger` over the filtered captions (kept in `proposals`)."""
        self.begin(mutating=False)
        keys = self.filtered_keys()
        proposals = propose_consolidation({key: self.texts[key] for key in keys}, trigger,
                                          min_share=float(min_share))
        self.proposals = {proposal_label(p): p for p in proposals}
        if not proposals:
            return "No physical-feature tag is in that share of the filtered captions."
        return f"{plural(len(proposals), 'feature tag')} proposed: untick any to keep, then apply."

    def consolidate(self, trigger: str, chosen: Sequence[str]) -> str:
        """Fold the chosen proposals (their labels) into `trigger` on the filtered captions: one undo step."""
        tags = [self.proposals[label].tag for label in chosen if label in self.proposals]
        if not tags:
            raise DatasetUIError("press Propose and keep at least one tag ticked")
        return self.batch(Consolidate(trigger, tuple(tags)))
