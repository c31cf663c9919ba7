"""The Dataset tab's state for one browser session, and the actions on it (no gradio).

`DatasetSession` holds the loaded Dataset, the caption texts being edited, the captions as they were on disk
when loaded or last saved (the `expected` of the conflict check), the EditHistory, the filter, the selected
image and the gallery page; its methods load, filter, select, batch-edit and undo. Edits of one caption are in
dataset_edits, saving in dataset_saving. Each action returns a Markdown message (None: keep the last one) or
raises a LoraStudioError whose text the tab shows; nothing is written to disk except by saving and
`rename_repeats`. Loading another folder or reverting with unsaved edits needs the same action twice
(ConfirmationNeeded).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from ...dataset.consolidate import ConsolidationProposal
from ...dataset.folder import SIGNATURE, Dataset, DatasetItem, parse_repeats_folder, rename_subset_repeats, scan_dataset
from ...dataset.gc_pause import paused_gc
from ...dataset.history import EditHistory
from ...dataset.roots import AllowedRoots
from ...dataset.tags import TagEdit, TagFilter, split_tags
from ...errors import LoraStudioError
from ...jobs import Job
from ...wording import plural
from ..model_panel import escape_markdown
from .loading import within_roots
from .state import CaptionState

PAGE_SIZE = 48
"""Thumbnails per gallery page: enough to scan quickly, few enough that 1000 images stay fast."""


MAX_SUGGESTIONS = 20000
"""Autocomplete entries sent to the page at most (a v3 tagger knows about 10,000 tags)."""


class DatasetUIError(LoraStudioError):
    """The tab cannot do what was asked (nothing loaded, a stale chip, tagging running, ...); says why."""


class ConfirmationNeeded(DatasetUIError):
    """An action would discard unsaved edits; doing the same action again confirms it."""


def code(text: str) -> str:
    """`text` as a Markdown code span (shown literally, so nothing inside is escaped)."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


class DatasetSession(CaptionState):
    """One page's Dataset tab: what is loaded, edited, filtered and selected. Not thread-safe: hold `lock`."""

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
        self.save_plan: Any = None  # what the running save writes (dataset_saving)
        self._suggestions: tuple[str, ...] | None = None
        self.frequency_search = ""
        self.frequency_page = 0
        self.chosen_subset: str | None = None
        self.thumb_dir: Callable[[], Path | None] = lambda: None  # where thumbnails are cached (dataset_thumbs)
        self.sent: dict[str, Any] = {}  # what the page shows now (see dataset_wiring)

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

    # --- loading ----------------------------------------------------------------------------------------------

    def load(self, path: str, caption_ext: str = ".txt", recursive: bool = True) -> str:
        """Open `path` (inside an allowed root; a relative name is looked up in the roots) as the dataset; with
        unsaved edits only when asked twice. A load that fails leaves nothing loaded (no action works on the folder
        loaded before while the page shows another) unless unsaved edits keep it: the message says so."""
        with paused_gc():  # the scan and the tag index allocate per caption: see gc_pause
            return self._load(path, caption_ext, recursive)

    def _load(self, path: str, caption_ext: str, recursive: bool) -> str:
        self.require_idle()
        text = (path or "").strip()
        if not text:
            self.pending = None
            raise DatasetUIError("choose or type a dataset folder first")
        allowed = AllowedRoots(self.roots())
        try:
            folder = allowed.locate(text)
            self._confirm_discard(f"load:{folder}", "Load")
            scanned = scan_dataset(folder, caption_ext=(caption_ext or ".txt").strip(), recursive=bool(recursive),
                                   check_images=SIGNATURE)
        except ConfirmationNeeded:
            raise
        except LoraStudioError as error:
            self.pending = None
            raise DatasetUIError(f"{error}. {self._unload_after_failure()}") from error
        dataset = within_roots(scanned, allowed, self.left_out)
        self._use(dataset)
        self.history.clear()
        self.tag_filter = TagFilter()
        self.page = self.frequency_page = 0
        counts = f"{plural(len(dataset.items), 'image')}, {sum(i.caption is not None for i in dataset.items)} " \
                 f"with captions, {plural(len(dataset.subsets()), 'subfolder')}"
        problems = len(dataset.problems) + len(self.left_out)
        tail = f"; {plural(problems, 'problem')} listed under **Folder**" if problems else ""
        return f"Loaded {code(str(folder))}: {counts}{tail}."

    def _unload_after_failure(self) -> str:
        """After a failed load: unload the dataset unless it has unsaved edits; what is loaded now, in words."""
        if self.dataset is None:
            return "Nothing is loaded."
        unsaved = len(self.unsaved_keys())
        if unsaved:
            return (f"{self.dataset.root} stays loaded for its {plural(unsaved, 'unsaved caption')}: "
                    "Save or Revert them, then load again.")
        self.unload()
        return "Nothing is loaded now."

    def unload(self) -> None:
        """Forget the loaded dataset (nothing unsaved is checked here): the tab is as before any load."""
        self.dataset, self.texts, self.loaded, self.tag_filter = None, {}, {}, TagFilter()
        self.selected, self.page, self.chosen_subset, self._suggestions, self._filtered = None, 0, None, None, None
        self.frequency_page = 0
        for collection in (self.history, self.conflicts, self.failures, self.proposals, self.left_out):
            collection.clear()

    def _use(self, dataset: Dataset, *, keep_texts: bool = False) -> None:
        """Show `dataset` as read from disk: texts = baseline (unless `keep_texts`: the same keys, texts as they
        are), selection kept when the image is still there."""
        self.dataset = dataset
        keys = dataset.keys()
        if not keep_texts:
            self.texts = dict(zip(keys, (item.text for item in dataset.items)))
        self.loaded = dict(zip(keys, (item.caption for item in dataset.items)))
        self.conflicts.clear()
        self.failures.clear()
        self.proposals.clear()
        self._suggestions = None
        if self.selected not in self.texts:
            self.selected = next(iter(self.texts), None)

    def rescan(self) -> Dataset:
        """The loaded folder read again with the same options (images outside the roots left out)."""
        dataset = self.require_loaded()
        fresh = scan_dataset(dataset.root, caption_ext=dataset.caption_ext, recursive=dataset.recursive,
                             check_images=dataset.check_images)
        return within_roots(fresh, AllowedRoots(self.roots()), self.left_out)

    def revert(self) -> str:
        """Discard unsaved edits and read the folder again (asked twice when there are edits)."""
        pending = self.pending
        self.begin()
        self.pending = pending
        self._confirm_discard("revert", "Revert")
        discarded = len(self.unsaved_keys())
        self._use(self.rescan())
        self.history.clear()
        return f"Reloaded from disk; {plural(discarded, 'unsaved caption')} discarded."

    def rename_repeats(self, subset: str | None, repeats: Any) -> str:
        """Rename a subfolder to `<repeats>_<name>` (no unsaved edits: the images' paths change)."""
        self.begin()
        if not subset:
            raise DatasetUIError("choose the subfolder to rename")
        unsaved = len(self.unsaved_keys())
        if unsaved:
            raise DatasetUIError(f"save or revert the {plural(unsaved, 'unsaved caption')} first: renaming the "
                                 "folder changes the images' paths")
        number = _whole_number(repeats, "repeats", 1)
        renamed = rename_subset_repeats(self.require_loaded(), subset, number)
        folder = PurePosixPath(subset)
        self.chosen_subset = str(folder.with_name(f"{number}_{parse_repeats_folder(folder.name)[1]}"))
        self._use(within_roots(renamed, AllowedRoots(self.roots()), self.left_out))
        self.history.clear()
        return f"Renamed {code(subset)} to repeats {number}."

    def choose_subset(self, subset: str | None) -> None:
        """The subfolder whose repeats the page shows for renaming."""
        self.begin(mutating=False)
        self.chosen_subset = subset

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

    # --- edits ------------------------------------------------------------------------------------------------

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
        return f"{escape_markdown(edit.description)}: {plural(len(changed), 'caption')} of {len(keys)} " \
               "in the filter changed."

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

    # --- jobs that write captions ------------------------------------------------------------------------------

    def start_job(self, job: Job[Any], description: str) -> None:
        """Remember the tagging job (the caller checked there are no unsaved edits) and how to name its undo."""
        self.job = job
        self.job_description = description

    def reload_as_step(self) -> int:
        """Read the folder again after the job wrote captions; its changes become one undo step, already saved.

        Returns how many captions changed. When images appeared or vanished meanwhile, the history is cleared.
        """
        description = self.job_description
        fresh = self.rescan()
        after = {fresh.key(item): item.text for item in fresh.items}
        if set(after) != set(self._texts):
            before = dict(self._texts)
            self._use(fresh)
            self.history.clear()
            return sum(before.get(key) != text for key, text in self.texts.items())
        self._use(fresh, keep_texts=True)
        return len(self.record(after, description))


def _whole_number(value: Any, what: str, minimum: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise DatasetUIError(f"{what} must be a whole number of at least {minimum}, got {value!r}")
    return int(number)
