"""The captions a dataset session edits, with what is derived from them kept up to date instead of recomputed.

`CaptionState` holds the texts being edited (an IndexedCaptions: each caption's tags and the tag counts), the
captions as on disk (`loaded`, the baseline), the filter, and what is derived from them: the filtered keys and
their tag counts (cached until a caption or the filter changes) and the unsaved keys (found among the keys
changed since they were last found saved, never by comparing every caption). A batch edit looks only at the
captions the index says it can change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..caption_format import Caption
from ..gc_pause import paused_gc
from ..tag_index import IndexedCaptions
from ..tags import TagEdit, TagFilter, join_tags


class Baseline(dict):  # type: ignore[type-arg]  # dict[str, Caption | None]
    """The captions as on disk by key; tells the session which keys changed (for the unsaved count)."""

    def __init__(self, items: Iterable[tuple[str, Caption | None]] = (),
                 changed: Callable[[str], None] | None = None) -> None:
        super().__init__(items)
        self.changed = changed

    def __setitem__(self, key: str, value: Caption | None) -> None:
        super().__setitem__(key, value)
        if self.changed is not None:
            self.changed(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class CaptionState:
    """The edited captions, their baseline and filter, and the unsaved / filtered / counted views of them."""

    def __init__(self) -> None:
        self._touched: set[str] = set()  # keys whose text or baseline changed since they were last found saved
        self._stamp = 0  # counts those changes
        self._unsaved: tuple[int, list[str], set[str]] | None = None
        self._texts = IndexedCaptions(changed=self._touch)
        self._loaded = Baseline(changed=self._touch)
        self.tag_filter = TagFilter()
        self._filtered: tuple[Any, list[str], set[int] | None] | None = None
        self._filtered_counts: tuple[Any, list[tuple[str, int]]] | None = None
        self.history: Any = None  # an EditHistory, set by the session

    @property
    def texts(self) -> IndexedCaptions:
        """The captions being edited by key, in dataset order, with their tag index."""
        return self._texts

    @texts.setter
    def texts(self, texts: Mapping[str, str]) -> None:
        self._texts = IndexedCaptions(texts, changed=self._touch)
        self._touched = set(self._texts)
        self._changed()

    @property
    def loaded(self) -> Baseline:
        """The captions as on disk when loaded or last saved (the `expected` of the conflict check)."""
        return self._loaded

    @loaded.setter
    def loaded(self, loaded: Mapping[str, Caption | None]) -> None:
        self._loaded = Baseline(loaded.items(), changed=self._touch)
        self._touched = set(self._texts)
        self._changed()

    def _touch(self, key: str) -> None:
        self._touched.add(key)
        self._changed()

    def _changed(self) -> None:
        self._stamp += 1

    @property
    def keys(self) -> list[str]:
        return list(self._texts)

    def baseline_text(self, key: str) -> str:
        caption = self._loaded.get(key)
        return caption.text if caption is not None else ""

    def _unsaved_state(self) -> tuple[int, list[str], set[str]]:
        """(stamp, unsaved keys in dataset order, the same as a set), recomputed from the touched keys only."""
        if self._unsaved is None or self._unsaved[0] != self._stamp:
            texts, baseline = self._texts, self.baseline_text
            dirty = {key for key in self._touched if key in texts and texts[key] != baseline(key)}
            self._touched = set(dirty)
            self._unsaved = (self._stamp, sorted(dirty, key=texts.position), dirty)
        return self._unsaved

    def unsaved_keys(self) -> list[str]:
        return list(self._unsaved_state()[1])

    def is_unsaved(self, key: str) -> bool:
        return key in self._unsaved_state()[2]

    def _filter_state(self) -> tuple[Any, list[str], set[int] | None]:
        """(state, keys passing the filter in dataset order, their positions or None for all), from the index."""
        state = (self.tag_filter, self._texts.index.version, len(self._texts))
        if self._filtered is None or self._filtered[0] != state:
            texts = self._texts
            chosen = texts.index.select(self.tag_filter, texts.positions)
            keys = list(texts) if chosen is None else texts.keys_at(chosen)
            self._filtered = (state, keys, chosen)
        return self._filtered

    def filtered_keys(self) -> list[str]:
        """The keys whose caption passes the filter, in dataset order (looked up in the tag index)."""
        return list(self._filter_state()[1])

    def tag_counts(self, keys: Iterable[str] | None = None) -> list[tuple[str, int]]:
        """(tag, how many of the captions of `keys` hold it), most frequent first, as tags.tag_frequency."""
        if keys is None:
            return self._texts.index.counts()
        position = self._texts.position
        return self._texts.index.counts(position(key) for key in keys)

    def filtered_tag_counts(self) -> list[tuple[str, int]]:
        """tag_counts of the filtered captions (kept until a caption or the filter changes)."""
        state, _, chosen = self._filter_state()
        if self._filtered_counts is None or self._filtered_counts[0] != state:
            index = self._texts.index
            self._filtered_counts = (state, index.counts() if chosen is None else index.counts(chosen))
        return list(self._filtered_counts[1])

    def tags_of(self, key: str) -> list[str]:
        return list(self._texts.tags(key))

    def apply_edit(self, edit: TagEdit, positions: set[int] | None) -> dict[str, str]:
        """Apply `edit` to the captions at `positions` (None: all) as one undo step; returns the changed texts.

        Only the captions the index says `edit` can change are looked at, each through its indexed tags."""
        with paused_gc():  # a new text and tag tuple per caption: see gc_pause
            return self._apply_edit(edit, positions)

    def _apply_edit(self, edit: TagEdit, positions: set[int] | None) -> dict[str, str]:
        texts = self._texts
        candidates = texts.index.candidates(edit)
        if candidates is not None and positions is not None:
            candidates &= positions
        targets = sorted(candidates if candidates is not None else
                         positions if positions is not None else texts.positions())
        split: dict[str, tuple[str, tuple[str, ...]]] = {}
        tag_lists, key_at, apply = texts.index.tag_lists(), texts.key_at, edit.apply
        for position in targets:
            tags = list(tag_lists[position] or ())
            new = apply(tags)
            if new != tags:
                split[key_at(position)] = (join_tags(new), tuple(new))
        texts.expect_many(split)
        return self.history.set_texts(texts, {key: text for key, (text, _) in split.items()}, edit.description)
