"""Saving the Dataset tab's edits: every changed caption written atomically, the previous content backed up, and
a caption changed on disk since it was loaded never overwritten silently: it is listed, and the user either
overwrites it (what is on disk is backed up first) or reloads it (the edit it replaces stays one Undo away).
"""

from __future__ import annotations

from ..dataset.captions import BACKUP_DIR_NAME, CaptionChange, read_caption, save_captions
from ..dataset.errors import CaptionConflictError, DatasetError
from ..wording import plural
from .dataset_session import DatasetSession, code


def save(session: DatasetSession) -> str:
    """Write every unsaved caption; conflicts are listed in the session, not written."""
    session.begin()
    keys = session.unsaved_keys()
    if not keys:
        return "Nothing to save."
    return _save(session, keys, force=False)


def overwrite_conflicts(session: DatasetSession) -> str:
    """Save the conflicting captions anyway."""
    session.begin()
    keys = [key for key in session.conflicts if key in session.texts]
    session.conflicts.clear()
    unsaved = set(session.unsaved_keys())
    keys = [key for key in keys if key in unsaved]
    return _save(session, keys, force=True) if keys else "No conflicts to overwrite."


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


def _save(session: DatasetSession, keys: list[str], *, force: bool) -> str:
    dataset = session.require_loaded()
    paths = {dataset.item(key).caption_path: key for key in keys}
    changes = [CaptionChange(path, session.texts[key], session.loaded[key]) for path, key in paths.items()]
    result = save_captions(changes, root=dataset.root, force=force)
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
    if session.conflicts:
        parts.append(f"**{plural(len(session.conflicts), 'caption')} changed on disk** since loaded: not written, "
                     "choose below")
    failed = sum(not isinstance(failure.error, CaptionConflictError) for failure in result.failed)
    if failed:
        parts.append(f"**{plural(failed, 'caption')} could not be written** (listed below)")
    return "; ".join(parts) + "."
