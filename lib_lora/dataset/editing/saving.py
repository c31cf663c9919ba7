"""Saving a session's edits: every changed caption written atomically, the previous content backed up, and a caption
changed on disk since it was loaded never overwritten silently: it is listed, and the user either overwrites it
(what is on disk is backed up first) or reloads it (the edit it replaces stays one Undo away).

A save of many captions runs as a background job (`start_save`): the page follows its progress, and cancelling it
stops it between files, so each caption is either its old file or its new one; the message says how many were
saved, and the ones not saved keep their edits. `save` does the same work in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...jobs import Job, JobControl, JobSnapshot
from ...wording import code, plural
from ..backups import BACKUP_DIR_NAME
from ..caption_format import read_caption
from ..captions import BatchSaveResult, CaptionChange, save_captions
from ..errors import CaptionConflictError, DatasetError
from .errors import DatasetUIError
from .loading import DatasetLoading

Plan = tuple[dict[Any, str], list[CaptionChange], bool]
"""(key by caption path, the changes, force): a save taken from the session, to run with or without its lock."""


class CaptionSaving(DatasetLoading):
    """Writing the unsaved captions (here or as a job), and settling the conflicts a save found."""

    def save(self, progress: Callable[[int, int], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> str:
        """Write every unsaved caption; conflicts are listed in the session, not written."""
        plan = self._plan_unsaved()
        if plan is None:
            return "Nothing to save."
        return self._finish(plan, save_captions(plan[1], root=self.require_loaded().root, force=plan[2],
                                                progress=progress, cancelled=cancelled))

    def overwrite_conflicts(self) -> str:
        """Save the conflicting captions anyway."""
        self.begin()
        keys = [key for key in self.conflicts if key in self.texts]
        self.conflicts.clear()
        keys = [key for key in keys if self.is_unsaved(key)]
        if not keys:
            return "No conflicts to overwrite."
        plan = self._plan(keys, force=True)
        return self._finish(plan, save_captions(plan[1], root=self.require_loaded().root, force=True))

    def reload_conflicts(self) -> str:
        """Take the conflicting captions as they are on disk now; one undo step brings the edits back."""
        dataset = self.begin()
        keys = [key for key in self.conflicts if key in self.texts]
        self.conflicts.clear()
        texts: dict[str, str] = {}
        for key in keys:
            try:
                caption = read_caption(dataset.item(key).caption_path)
            except DatasetError as error:
                self.failures[key] = error.reason
                continue
            self.loaded[key] = caption
            texts[key] = caption.text if caption is not None else ""
        changed = self.history.set_texts(self.texts, texts, f"reload {plural(len(texts), 'caption')} from disk")
        return (f"Reloaded {plural(len(texts), 'caption')} from disk; {len(changed)} replaced your edits "
                "(**Undo** brings them back).")

    # --- the save as a job the page follows ---------------------------------------------------------------------

    def start_save(self) -> tuple[str, Job[BatchSaveResult] | None]:
        """Begin saving every unsaved caption in the background (no job when there is nothing to save); the session
        refuses edits until `finish_save` has taken the result in."""
        plan = self._plan_unsaved()
        if plan is None:
            return "Nothing to save.", None
        root = self.require_loaded().root
        changes = plan[1]

        def work(control: JobControl) -> BatchSaveResult:
            control.progress(0, len(changes), "saving captions")
            return save_captions(changes, root=root, force=plan[2],
                                 progress=lambda done, total: control.progress(done, total),
                                 cancelled=lambda: control.cancelled)

        job: Job[BatchSaveResult] = Job("saving", work).start()
        self.save_job, self.save_plan = job, plan
        return f"Saving {plural(len(changes), 'caption')}…", job

    def finish_save(self, snapshot: JobSnapshot) -> str:
        """Take a finished save job's result into the session and say what it did."""
        plan = self.save_plan
        self.save_job, self.save_plan = None, None
        if plan is None:
            return "The save had already finished."
        if snapshot.state != "done":
            return f"**Saving failed:** {snapshot.error or 'cancelled'}; the captions not saved keep their edits."
        return self._finish(plan, snapshot.result)

    def cancel_save(self) -> str:
        job = self.save_job
        if job is None or not job.snapshot().active:
            return "No save is running."
        job.cancel()
        return "Cancelling the save after the files under way…"

    # --- shared -----------------------------------------------------------------------------------------------

    def _plan_unsaved(self) -> Plan | None:
        self.begin()
        keys = self.unsaved_keys()
        return self._plan(keys, force=False) if keys else None

    def _plan(self, keys: list[str], *, force: bool) -> Plan:
        dataset = self.require_loaded()
        paths = {dataset.item(key).caption_path: key for key in keys}
        changes = [CaptionChange(path, self.texts[key], self.loaded[key]) for path, key in paths.items()]
        return paths, changes, force

    def _finish(self, plan: Plan, result: BatchSaveResult) -> str:
        paths = plan[0]
        if self.dataset is None:
            raise DatasetUIError("the dataset was unloaded while saving")
        for saved in result.saved:
            key = paths[saved.path]
            self.loaded[key] = saved.caption
            self.failures.pop(key, None)
        for failure in result.failed:
            key = paths[failure.path]
            if isinstance(failure.error, CaptionConflictError):
                self.conflicts[key] = failure.error.reason
            else:
                self.failures[key] = failure.error.reason
        return self._saved_message(result)

    def _saved_message(self, result: BatchSaveResult) -> str:
        backups = sum(saved.backup is not None for saved in result.saved)
        parts = [f"Saved {plural(len(result.written), 'caption')}"]
        if backups:
            parts.append(f"the previous versions are in {code(BACKUP_DIR_NAME + '/')} of the dataset folder")
        if result.skipped:
            parts.append(f"**cancelled: {plural(len(result.skipped), 'caption')} not saved** (they keep your edits; "
                         "Save writes them)")
        if self.conflicts:
            parts.append(f"**{plural(len(self.conflicts), 'caption')} changed on disk** since loaded: not written, "
                         "choose below")
        failed = sum(not isinstance(failure.error, CaptionConflictError) for failure in result.failed)
        if failed:
            parts.append(f"**{plural(failed, 'caption')} could not be written** (listed below)")
        return "; ".join(parts) + "."
