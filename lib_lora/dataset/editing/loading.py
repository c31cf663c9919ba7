"""Which folder a dataset session works on: loading it inside the allowed roots, reading it again (revert, after the
tagger), renaming a subfolder's repeats, and the check that the folder a page shows is the one loaded.

Loading another folder or reverting with unsaved edits needs the same action twice (ConfirmationNeeded). A load
that fails leaves nothing loaded unless unsaved edits keep the folder loaded before; the message says which.
Nothing is written to disk here except by `rename_repeats`.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

from ...errors import LoraStudioError
from ...jobs import Job
from ...wording import code, plural
from ..folder import SIGNATURE, Dataset, parse_repeats_folder, rename_subset_repeats, scan_dataset
from ..gc_pause import paused_gc
from ..roots import AllowedRoots
from ..tags import TagFilter
from .browsing import DatasetBrowsing
from .errors import ConfirmationNeeded, DatasetUIError


def within_roots(dataset: Dataset, allowed: AllowedRoots, left_out: list[str]) -> Dataset:
    """`dataset` without items whose image or caption is a link leading outside the allowed roots."""
    left_out.clear()
    kept = []
    root_allowed = allowed.allows(dataset.root)
    for item in dataset.items:
        if root_allowed and not dataset.may_link(item):  # no link among its files: inside the root, which is allowed
            kept.append(item)
        elif allowed.allows(item.image) and allowed.allows(item.caption_path):
            kept.append(item)
        else:
            left_out.append(f"{item.image}: its image or caption links outside the allowed folders; left out")
    if len(kept) == len(dataset.items):
        return dataset
    return Dataset(root=dataset.root, caption_ext=dataset.caption_ext, items=kept, problems=dataset.problems,
                   recursive=dataset.recursive, check_images=dataset.check_images, linked=dataset.linked)


class DatasetLoading(DatasetBrowsing):
    """Loading, reloading and renaming the session's folder."""

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
        """Forget the loaded dataset (nothing unsaved is checked here): the session is as before any load."""
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

    def require_shown(self, path: str | None) -> Dataset:
        """The loaded dataset, when the folder the page shows (`path`, the Folder box; empty: the one loaded) is
        that dataset's folder; DatasetUIError naming both otherwise (a folder chosen or typed, then not loaded)."""
        dataset = self.require_loaded()
        text = (path or "").strip()
        if not text:
            return dataset
        try:
            shown = AllowedRoots(self.roots()).locate(text)
        except LoraStudioError as error:
            raise DatasetUIError(f"the Folder box holds {text!r}, which cannot be loaded ({error}); {dataset.root} "
                                 "is loaded: choose it again, or load another folder") from error
        if shown != Path(dataset.root).resolve():
            raise DatasetUIError(f"the Folder box shows {shown}, but {dataset.root} is loaded: press Load first, or "
                                 "choose the loaded folder again")
        return dataset

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
