"""Saving the Dataset tab's edits: every changed caption written atomically, the previous content backed up, and
a caption changed on disk since it was loaded never overwritten silently: it is listed, and the user either
overwrites it (what is on disk is backed up first) or reloads it (the edit it replaces stays one Undo away).

A save of many captions runs as a background job (`start_save`): the page shows its progress, and **Cancel**
stops it between files, so each caption is either its old file or its new one; the message says how many were
saved, and the ones not saved keep their edits. `save` does the same work in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ...dataset.captions import BACKUP_DIR_NAME, BatchSaveResult, CaptionChange, read_caption, save_captions
from ...dataset.errors import CaptionConflictError, DatasetError
from ...jobs import Job, JobControl, JobSnapshot
from ...wording import plural
from ..jobs_ui import follow, progress_line
from .session import DatasetSession, DatasetUIError, code

Plan = tuple[dict[Any, str], list[CaptionChange], bool]
"""(key by caption path, the changes, force): a save taken from the session, to run with or without its lock."""


def save(session: DatasetSession, progress: Callable[[int, int], None] | None = None,
         cancelled: Callable[[], bool] | None = None) -> str:
    """Write every unsaved caption; conflicts are listed in the session, not written."""
    plan = _plan_unsaved(session)
    if plan is None:
        return "Nothing to save."
    return _finish(session, plan, save_captions(plan[1], root=session.require_loaded().root, force=plan[2],
                                                progress=progress, cancelled=cancelled))


def overwrite_conflicts(session: DatasetSession) -> str:
    """Save the conflicting captions anyway."""
    session.begin()
    keys = [key for key in session.conflicts if key in session.texts]
    session.conflicts.clear()
    keys = [key for key in keys if session.is_unsaved(key)]
    if not keys:
        return "No conflicts to overwrite."
    plan = _plan(session, keys, force=True)
    return _finish(session, plan, save_captions(plan[1], root=session.require_loaded().root, force=True))


def reload_conflicts(session: DatasetSession) -> str:
    """Take the conflicting captions as they are on disk now; one undo step brings the edits back."""
    dataset = session.begin()
    keys = [key for key in session.conflicts if key in session.texts]
    session.conflicts.clear()
    texts: dict[str, str] = {}
    for key in keys:
        try:
            caption = read_caption(dataset.item(key).caption_path)
        except DatasetError as error:
            session.failures[key] = error.reason
            continue
        session.loaded[key] = caption
        texts[key] = caption.text if caption is not None else ""
    changed = session.history.set_texts(session.texts, texts, f"reload {plural(len(texts), 'caption')} from disk")
    return (f"Reloaded {plural(len(texts), 'caption')} from disk; {len(changed)} replaced your edits "
            "(**Undo** brings them back).")


# --- the save as a job the page follows -----------------------------------------------------------------------


def start_save(session: DatasetSession) -> tuple[str, Job[BatchSaveResult] | None]:
    """Begin saving every unsaved caption in the background (no job when there is nothing to save); the session
    refuses edits until `finish_save` has taken the result in."""
    plan = _plan_unsaved(session)
    if plan is None:
        return "Nothing to save.", None
    root = session.require_loaded().root
    changes = plan[1]

    def work(control: JobControl) -> BatchSaveResult:
        control.progress(0, len(changes), "saving captions")
        return save_captions(changes, root=root, force=plan[2],
                             progress=lambda done, total: control.progress(done, total),
                             cancelled=lambda: control.cancelled)

    job: Job[BatchSaveResult] = Job("saving", work).start()
    session.save_job, session.save_plan = job, plan
    return f"Saving {plural(len(changes), 'caption')}…", job


def follow_save(session: DatasetSession, job: Job[BatchSaveResult]) -> Iterator[tuple[str | None, bool]]:
    """(message, finished) while the save runs: its progress, then what `finish_save` says."""
    for snapshot in follow(job):
        if snapshot.active:
            yield f"Saving captions: {progress_line(snapshot)} (**Cancel save** stops after the files under way)", \
                False
        else:
            with session.lock:
                message = finish_save(session, snapshot)
            yield message, True


def finish_save(session: DatasetSession, snapshot: JobSnapshot) -> str:
    """Take a finished save job's result into the session and say what it did."""
    plan = session.save_plan
    session.save_job, session.save_plan = None, None
    if plan is None:
        return "The save had already finished."
    if snapshot.state != "done":
        return f"**Saving failed:** {snapshot.error or 'cancelled'}; the captions not saved keep their edits."
    return _finish(session, plan, snapshot.result)


def cancel_save(session: DatasetSession) -> str:
    job = session.save_job
    if job is None or not job.snapshot().active:
        return "No save is running."
    job.cancel()
    return "Cancelling the save after the files under way…"


# --- shared -------------------------------------------------------------------------------------------------


def _plan_unsaved(session: DatasetSession) -> Plan | None:
    session.begin()
    keys = session.unsaved_keys()
    return _plan(session, keys, force=False) if keys else None


def _plan(session: DatasetSession, keys: list[str], *, force: bool) -> Plan:
    dataset = session.require_loaded()
    paths = {dataset.item(key).caption_path: key for key in keys}
    changes = [CaptionChange(path, session.texts[key], session.loaded[key]) for path, key in paths.items()]
    return paths, changes, force


def _finish(session: DatasetSession, plan: Plan, result: BatchSaveResult) -> str:
    paths = plan[0]
    if session.dataset is None:
        raise DatasetUIError("the dataset was unloaded while saving")
    for saved in result.saved:
        key = paths[saved.path]
        session.loaded[key] = saved.caption
        session.failures.pop(key, None)
    for failure in result.failed:
        key = paths[failure.path]
        if isinstance(failure.error, CaptionConflictError):
            session.conflicts[key] = failure.error.reason
        else:
            session.failures[key] = failure.error.reason
    backups = sum(saved.backup is not None for saved in result.saved)
    parts = [f"Saved {plural(len(result.written), 'caption')}"]
    if backups:
        parts.append(f"the previous versions are in {code(BACKUP_DIR_NAME + '/')} of the dataset folder")
    if result.skipped:
        parts.append(f"**cancelled: {plural(len(result.skipped), 'caption')} not saved** (they keep your edits; "
                     "Save writes them)")
    if session.conflicts:
        parts.append(f"**{plural(len(session.conflicts), 'caption')} changed on disk** since loaded: not written, "
                     "choose below")
    failed = sum(not isinstance(failure.error, CaptionConflictError) for failure in result.failed)
    if failed:
        parts.append(f"**{plural(failed, 'caption')} could not be written** (listed below)")
    return "; ".join(parts) + "."
