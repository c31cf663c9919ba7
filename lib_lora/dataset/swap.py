"""Putting a saved caption in place without losing a version another program writes at the same moment.

`install` puts `staging` (the new file, complete and fsynced, beside the caption) at the caption's path:
- Where the platform can swap two names atomically (Linux renameat2 RENAME_EXCHANGE), one swap puts the new file
  in place, so the path always names a whole file, and the file it named a moment before, whoever wrote it, is
  now at the staging name. That file is read: if it is the version the edit started from (`accept`), it goes to
  the backup folder; if not, the swap is undone (that version is back in place, the new one is dropped: the
  editor still has it) and CaptionConflictError says so. A version a third program slipped in is kept as a
  backup. Writers that write in place into the old file after the swap write into the backup.
- A new caption goes in with a rename that never replaces (RENAME_NOREPLACE, else a hard link), so a caption
  created meanwhile stays and is reported.
- Elsewhere the live file is hard-linked aside, checked and replaced with os.replace; a writer that replaces it
  in the microseconds between that check and the replace is not noticed. Without hard links it is copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ..atomic import exchange, hidden_name, rename_noreplace
from .backups import BackupSlot, describe_os_error
from .errors import CaptionConflictError, CaptionWriteError
from .reading.worker import READ_FLAGS

Accept = Callable[["bytes | None"], bool]
"""Whether the file found in place (its bytes; None: no file) is the version the save may replace."""

CHANGED_WHILE_SAVING = (
    "the caption changed on disk while it was being saved: your edit was not written and the file keeps the other "
    "version; reload it, or save with force to overwrite it (it is backed up first)"
)

_ATTEMPTS = 3
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.EXDEV, getattr(errno, "ENOTSUP", -3),
                  getattr(errno, "EOPNOTSUPP", -4)}


class _Unreadable:
    """What _peek gives for something that is not a readable plain file (a folder, a link, a huge file)."""


_UNREADABLE = _Unreadable()


class _Vanished(Exception):
    """The file at the caption's path disappeared between two steps; the caller tries again."""


def install(path: Path, staging: Path, new: bytes, accept: Accept, slot: BackupSlot, *, limit: int) -> Path | None:
    """Put the file `staging` (holding `new`) at `path`; returns where the file it replaced was backed up (None:
    there was none). Files over `limit` bytes are never accepted.

    CaptionConflictError when `accept` refuses what is at `path` at that moment (it stays, or is put back, at
    `path`); OSError or CaptionWriteError when it cannot be done (`path` as it was). `staging` is gone after.
    """
    for _ in range(_ATTEMPTS):
        try:
            swapped = exchange(staging, path)
        except FileNotFoundError:
            swapped = False
        except BaseException:
            _discard(staging)
            raise
        if swapped:
            return _after_exchange(path, staging, new, accept, slot, limit)
        try:
            if os.path.lexists(path):
                return _by_link(path, staging, accept, slot, limit)
            if not accept(None):
                raise CaptionConflictError("the caption file was deleted on disk while it was being saved; "
                                           "nothing was written", path=path)
            _create(staging, path)
            return None
        except (_Vanished, FileExistsError):
            continue
        except BaseException:
            _discard(staging)
            raise
    _discard(staging)
    raise CaptionConflictError("the caption file kept changing on disk while it was being saved; nothing was "
                               "written", path=path)


def _after_exchange(path: Path, staging: Path, new: bytes, accept: Accept, slot: BackupSlot, limit: int) -> Path:
    """The new file is in place and the one it replaced at `staging`: back that up, or undo the swap."""
    displaced = _peek(staging, limit)
    if not isinstance(displaced, _Unreadable) and accept(displaced):
        try:
            return slot.move(staging)
        except OSError as error:
            _undo_after_failed_backup(path, staging, new, limit, describe_os_error(error))
    try:
        swapped_back = exchange(staging, path)
    except OSError:
        swapped_back = False
    if not swapped_back:
        kept = _keep(staging, slot)
        raise CaptionConflictError("the caption changed on disk while it was being saved; your edit was written "
                                   f"and the other version was kept as {kept}", path=path)
    if _peek(staging, limit) == new:
        _discard(staging)
        raise CaptionConflictError(CHANGED_WHILE_SAVING, path=path)
    kept = _keep(staging, slot)
    raise CaptionConflictError(f"{CHANGED_WHILE_SAVING}; a third version, written meanwhile, was kept as {kept}",
                               path=path)


def _undo_after_failed_backup(path: Path, staging: Path, new: bytes, limit: int, reason: str) -> NoReturn:
    """The replaced file could not go to the backup folder: put it back in place and drop the new one."""
    try:
        swapped_back = exchange(staging, path)
    except OSError:
        swapped_back = False
    if swapped_back and _peek(staging, limit) == new:
        _discard(staging)
        raise CaptionWriteError(f"cannot move the previous version to the backup folder ({reason}); nothing was "
                                "changed", path=path)
    raise CaptionWriteError(f"the save could not be finished: a version of the caption could not be moved to the "
                            f"backup folder ({reason}) and is kept as {staging}", path=path)


def _by_link(path: Path, staging: Path, accept: Accept, slot: BackupSlot, limit: int) -> Path:
    """Without an atomic swap: link the live file aside, check it, replace it; _Vanished when it is gone."""
    aside = hidden_name(path, "old")
    try:
        _hard_link(path, aside)
    except FileNotFoundError:
        raise _Vanished from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        return _by_copy(path, staging, accept, slot, limit)
    try:
        displaced = _peek(aside, limit)
        if isinstance(displaced, _Unreadable) or not accept(displaced):
            raise CaptionConflictError(CHANGED_WHILE_SAVING, path=path)
        os.replace(staging, path)
    except BaseException:
        _discard(aside)
        raise
    return _keep(aside, slot)


def _by_copy(path: Path, staging: Path, accept: Accept, slot: BackupSlot, limit: int) -> Path:
    """Without hard links: copy the live file to the backup, check it, replace it."""
    current = _peek(path, limit)
    if current is None:
        raise _Vanished
    if isinstance(current, _Unreadable) or not accept(current):
        raise CaptionConflictError(CHANGED_WHILE_SAVING, path=path)
    backup = slot.copy(current)
    try:
        os.replace(staging, path)
    except BaseException:
        _discard(backup)
        raise
    return backup


def _create(staging: Path, path: Path) -> None:
    """Rename `staging` to `path`; FileExistsError (nothing changed) when a file is there."""
    if rename_noreplace(staging, path):
        return
    try:
        _hard_link(staging, path)
    except OSError as error:
        if isinstance(error, FileExistsError) or error.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "a file appeared", str(path)) from None
        os.replace(staging, path)
        return
    _discard(staging)


def _peek(path: Path, limit: int) -> bytes | None | _Unreadable:
    """The content of the plain file `path` (not following a link), None when absent, _UNREADABLE otherwise."""
    try:
        descriptor = os.open(path, READ_FLAGS | getattr(os, "O_NOFOLLOW", 0))  # a pipe is refused, not waited on
    except FileNotFoundError:
        return None
    except OSError:
        return _UNREADABLE
    try:  # plain descriptor reads: a buffered file object costs more than reading a caption
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return _UNREADABLE
        chunks = [os.read(descriptor, limit + 1)]
        size = len(chunks[0])
        while chunks[-1] and size <= limit:
            chunks.append(os.read(descriptor, limit + 1 - size))
            size += len(chunks[-1])
    finally:
        os.close(descriptor)
    return _UNREADABLE if size > limit else b"".join(chunks)


def _keep(path: Path, slot: BackupSlot) -> Path:
    """Move `path` into the backup slot; where that fails it stays where it is (under its hidden name)."""
    try:
        return slot.move(path)
    except OSError:
        return path


def _hard_link(source: Path, link: Path) -> None:
    if os.link in os.supports_follow_symlinks:
        os.link(source, link, follow_symlinks=False)
    else:
        os.link(source, link)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
