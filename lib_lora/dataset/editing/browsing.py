"""What a dataset session shows and how one moves through it: the filter, the selected image, the gallery and tag
table pages, and the undoable batch edits of the filtered captions.

`DatasetBrowsing` holds everything a session knows (its attributes are set here); loading, the edits of one caption
and saving build on it in loading.py, edits.py and saving.py. Each action returns a Markdown message (None: keep
the last one) or raises a DatasetUIError that says why nothing was done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...jobs import Job
from ...wording import escape_markdown, plural
from ..consolidate import ConsolidationProposal
from ..folder import Dataset, DatasetItem
from ..gc_pause import paused_gc
from ..history import EditHistory
from ..tags import TagEdit, TagFilter, split_tags
from .errors import ConfirmationNeeded, DatasetUIError
from .state import CaptionState

PAGE_SIZE = 48
"""Thumbnails per gallery page: enough to scan quickly, few enough that 1000 images stay fast."""

MAX_SUGGESTIONS = 20000
"""Autocomplete entries sent to the page at most (a v3 tagger knows about 10,000 tags)."""

FREQUENCY_ROWS = 100
"""Rows of the tag frequency table per page (a dataset of 50,000 images has thousands of tags)."""


class DatasetBrowsing(CaptionState):
    """The loaded dataset, its edited captions, filter, selection and pages. Not thread-safe: hold `lock`."""

    def __init__(self, roots: Callable[[], Sequence[Path]]) -> None:
        self.roots = roots
        self.lock = threading.RLock()
        super().__init__()
        self.dataset: Dataset | None = None
        self.history: EditHistory[str] = EditHistory()
        self.selected: str | None = None
        self.page = 0
        self.conflicts: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.left_out: list[str] = []
        self.pending: str | None = None
        self.proposals: dict[str, ConsolidationProposal] = {}
        self.job: Job[Any] | None = None
        self.job_description = ""
        self.vocabulary: tuple[str, ...] = ()
        self.save_job: Job[Any] | None = None
        self.save_plan: Any = None  # what the running save writes (saving.py)
        self._suggestions: tuple[str, ...] | None = None
        self.frequency_search = ""
        self.frequency_page = 0
        self.chosen_subset: str | None = None
        self.thumb_dir: Callable[[], Path | None] = lambda: None  # where the page caches thumbnails
        self.sent: dict[str, Any] = {}  # what the page shows now (kept by the page that shows this session)

    # --- queries ----------------------------------------------------------------------------------------------

    def item(self, key: str) -> DatasetItem:
        dataset = self.require_loaded()
        try:
            return dataset.item(key)
        except KeyError:
            raise DatasetUIError(f"no image {key!r} in the loaded dataset; it may have been reloaded") from None

    def page_count(self) -> int:
        return max(1, -(-len(self.filtered_keys()) // PAGE_SIZE))

    def page_keys(self) -> list[str]:
        keys = self.filtered_keys()
        self.page = min(max(self.page, 0), max(0, (len(keys) - 1) // PAGE_SIZE))
        return keys[self.page * PAGE_SIZE:(self.page + 1) * PAGE_SIZE]

    @property
    def tagging(self) -> bool:
        return self.job is not None and self.job.snapshot().active

    def suggestions(self) -> tuple[str, ...]:
        """Autocomplete for tag inputs: the dataset's tags as loaded (most frequent first), then the tagger's."""
        if self._suggestions is None:
            own = [tag for tag, _ in self.tag_counts()]
            self._suggestions = tuple(dict.fromkeys([*own, *self.vocabulary]))[:MAX_SUGGESTIONS]
        return self._suggestions

    def set_vocabulary(self, tags: Sequence[str]) -> None:
        """The chosen tagger model's tags, offered after the dataset's own."""
        if tuple(tags) != self.vocabulary:
            self.vocabulary = tuple(tags)
            self._suggestions = None

    def require_loaded(self) -> Dataset:
        if self.dataset is None:
            raise DatasetUIError("load a dataset folder first")
        return self.dataset

    @property
    def saving(self) -> bool:
        return self.save_job is not None

    def require_idle(self) -> None:
        """DatasetUIError while the tagger or a save is writing captions of this dataset."""
        if self.tagging:
            raise DatasetUIError("the tagger is writing this dataset's captions; wait for it or cancel it first")
        if self.saving:
            raise DatasetUIError("the captions are being saved; wait for the save or cancel it first")

    def begin(self, *, mutating: bool = True) -> Dataset:
        """Start an action on the loaded dataset: a pending confirmation lapses; edits wait for the tagger."""
        self.pending = None
        if mutating:
            self.require_idle()
        return self.require_loaded()

    def _confirm_discard(self, token: str, verb: str) -> None:
        count = len(self.unsaved_keys())
        if count and self.pending != token:
            self.pending = token
            raise ConfirmationNeeded(
                f"{plural(count, 'unsaved caption')} would be lost. Press **{verb}** again to discard them, "
                "or **Save** first."
            )
        self.pending = None

    # --- filter, selection, pages -----------------------------------------------------------------------------

    def set_filter(self, include: str, include_mode: str, exclude: str, exclude_mode: str) -> str:
        self.begin(mutating=False)
        self.tag_filter = TagFilter(tuple(split_tags(include or "")), tuple(split_tags(exclude or "")),
                                    include_mode, exclude_mode)
        return self._after_filter()

    def add_to_filter(self, tag: str, *, exclude: bool = False) -> str:
        self.begin(mutating=False)
        field = "exclude" if exclude else "include"
        current = getattr(self.tag_filter, field)
        if tag not in current:
            self.tag_filter = replace(self.tag_filter, **{field: (*current, tag)})
        return self._after_filter()

    def _after_filter(self) -> str:
        self.page = 0
        keys = self.filtered_keys()
        if self.selected not in keys:
            self.selected = keys[0] if keys else self.selected
        return f"{plural(len(keys), 'image')} of {len(self.texts)} match the filter."

    def select(self, key: str | None) -> str | None:
        self.begin(mutating=False)
        if not key:
            return None
        self.item(key)
        self.selected = key
        keys = self.filtered_keys()
        if key in keys:
            self.page = keys.index(key) // PAGE_SIZE
        return None

    def step_selection(self, step: int) -> str | None:
        """Select the previous (-1) or next (+1) image of the filtered set."""
        self.begin(mutating=False)
        keys = self.filtered_keys()
        if not keys:
            raise DatasetUIError("no image matches the filter")
        index = keys.index(self.selected) + step if self.selected in keys else 0
        return self.select(keys[index % len(keys)])

    def go_page(self, step: int) -> str | None:
        self.begin(mutating=False)
        self.page = min(max(self.page + step, 0), self.page_count() - 1)
        return None

    # --- the tag table ----------------------------------------------------------------------------------------

    def tag_rows(self, search: str = "") -> list[tuple[str, int]]:
        """(tag, count in the filter) of the filtered images, most frequent first, those matching every word
        searched."""
        words = (search or "").casefold().split()
        rows = self.filtered_tag_counts()
        return [(tag, count) for tag, count in rows if all(word in tag.casefold() for word in words)] if words else rows

    def tag_table_page(self, search: str = "") -> tuple[list[tuple[str, int]], int, int]:
        """(the rows matching `search`, the page of them shown, how many pages); the page is kept within them."""
        rows = self.tag_rows(search)
        pages = max(1, -(-len(rows) // FREQUENCY_ROWS))
        self.frequency_page = min(max(self.frequency_page, 0), pages - 1)
        return rows, self.frequency_page, pages

    def search_tags(self, text: str | None) -> None:
        """Show the tags matching `text` in the table, from its first page."""
        self.frequency_search, self.frequency_page = text or "", 0

    def turn_tag_page(self, step: int) -> None:
        """The table's previous (-1) or next (+1) page; the ends clamp."""
        pages = max(1, -(-len(self.tag_rows(self.frequency_search)) // FREQUENCY_ROWS))
        self.frequency_page = min(max(self.frequency_page + step, 0), pages - 1)

    # --- edits of the filtered captions -----------------------------------------------------------------------

    def record(self, texts: dict[str, str], description: str) -> dict[str, str]:
        """Store `texts` as one undo step; returns those that changed."""
        return self.history.set_texts(self.texts, texts, description)

    def batch(self, edit: TagEdit) -> str:
        """Apply `edit` to every caption in the filter as one undo step."""
        self.begin()
        _, keys, chosen = self._filter_state()
        if not keys:
            raise DatasetUIError("no image matches the filter; nothing was changed")
        changed = self.apply_edit(edit, chosen)
        message = f"{escape_markdown(edit.description)}: {plural(len(changed), 'caption')} of {len(keys)} " \
                  "in the filter changed."
        if self.history.let_go:
            message += f" To keep memory bounded, undo now reaches back {plural(self.history.depth, 'step')}."
        return message

    def undo(self) -> str:
        self.begin()
        description = self.history.undo_description
        if description is None:
            return "Nothing to undo."
        with paused_gc():
            changed = self.history.undo(self.texts)
        return f"Undid {escape_markdown(description)} ({plural(len(changed), 'caption')})."

    def redo(self) -> str:
        self.begin()
        description = self.history.redo_description
        if description is None:
            return "Nothing to redo."
        with paused_gc():
            changed = self.history.redo(self.texts)
        return f"Redid {escape_markdown(description)} ({plural(len(changed), 'caption')})."
