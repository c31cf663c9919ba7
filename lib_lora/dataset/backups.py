"""The backup folder of a dataset: where the previous version of a saved caption goes, never overwriting a backup
and never leaving the folder through a link (`<root>/.lora_studio_backup/<path relative to root>`, the stem
suffixed by a UTC timestamp, a counter added on a clash)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..atomic import rename_noreplace
from .errors import CaptionWriteError

BACKUP_DIR_NAME = ".lora_studio_backup"
"""Folder (under the dataset root) holding the previous versions of overwritten captions; scans skip it."""

_MAX_CLASHES = 1000
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, getattr(errno, "ENOTSUP", -3), getattr(errno, "EOPNOTSUPP", -4)}


def backup_path_for(path: Path, *, stamp: str, backup_dir: Path | None = None, root: Path | None = None) -> Path:
    """Where the backup of `path` taken at `stamp` goes (before any clash counter is added)."""
    base = Path(root) if root is not None else path.parent
    folder = Path(backup_dir) if backup_dir is not None else base / BACKUP_DIR_NAME
    relative = _relative(path, base)
    return folder / relative.parent / f"{relative.stem}.{stamp}{relative.suffix}"


@dataclass(frozen=True)
class BackupSlot:
    """Where one file's previous version goes: `target`, or `target` with a counter when that name is taken."""

    target: Path

    def move(self, source: Path) -> Path:
        """Move the file `source` into the slot without replacing any file (copied, then deleted, across file
        systems); returns where it went. OSError when it cannot, `source` then being where it was."""
        for candidate in self._candidates():
            try:
                if not rename_noreplace(source, candidate):
                    _hard_link(source, candidate)
                    os.unlink(source)
            except FileExistsError:
                continue
            except OSError as error:
                if error.errno != errno.EXDEV and error.errno not in _NO_HARD_LINKS:
                    raise
                if self._copy_file(source, candidate) is None:
                    continue
                os.unlink(source)
            return candidate
        raise OSError(errno.EEXIST, f"{_MAX_CLASHES} backups with the same timestamp already exist")

    def copy(self, data: bytes) -> Path:
        """Write `data` to a new file in the slot (fsynced, never replacing one); returns its path."""
        for candidate in self._candidates():
            if _write_new(candidate, lambda handle: handle.write(data)):
                return candidate
        raise OSError(errno.EEXIST, f"{_MAX_CLASHES} backups with the same timestamp already exist")

    def _candidates(self) -> Iterator[Path]:
        target = self.target
        yield target
        for attempt in range(1, _MAX_CLASHES):
            yield target.with_name(f"{target.stem}-{attempt}{target.suffix}")

    @staticmethod
    def _copy_file(source: Path, candidate: Path) -> Path | None:
        """Copy `source` to the new file `candidate` (None when that name is taken)."""

        def write(handle: BinaryIO) -> None:
            with open(source, "rb") as original:
                shutil.copyfileobj(original, handle)

        return candidate if _write_new(candidate, write) else None


def _write_new(candidate: Path, write: Callable[[BinaryIO], object]) -> bool:
    """Create `candidate` (never replacing a file), fill it with `write` and fsync it; False when the name is taken.
    A failed write leaves no file behind."""
    try:
        handle = open(candidate, "xb")
    except FileExistsError:
        return False
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    return True


def prepare_backup(path: Path, *, stamp: str, backup_dir: Path | None = None, root: Path | None = None) -> BackupSlot:
    """The slot for `path`'s backup, its folder created; CaptionWriteError (nothing changed) when the folder
    cannot be made or leads elsewhere through a link (a given `backup_dir` may itself be a link)."""
    target = backup_path_for(path, stamp=stamp, backup_dir=backup_dir, root=root)
    base = Path(root) if root is not None else path.parent
    anchor = Path(backup_dir).resolve() if backup_dir is not None else base.resolve() / BACKUP_DIR_NAME
    expected = anchor / _relative(path, base).parent
    if os.path.normcase(target.parent.resolve()) != os.path.normcase(expected):
        raise CaptionWriteError(
            f"the backup folder {target.parent} is, or is inside, a link leading to {target.parent.resolve()}; "
            "backups are written only inside it, so nothing was changed (remove the link to save)",
            path=path,
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CaptionWriteError(
            f"cannot back up the caption to {target.parent}: {describe_os_error(error)}; nothing was changed",
            path=path,
        ) from error
    return BackupSlot(target)


class BackupFolders:
    """prepare_backup for many captions of one save: each caption folder's backup folder is checked and made once.

    Thread-safe; `folders` lists the backup folders used (for syncing them once at the end)."""

    def __init__(self, *, stamp: str, backup_dir: Path | None = None, root: Path | None = None) -> None:
        self.stamp, self.backup_dir, self.root = stamp, backup_dir, root
        self._by_parent: dict[Path, Path] = {}
        self._lock = threading.Lock()

    @property
    def folders(self) -> list[Path]:
        with self._lock:
            return list(self._by_parent.values())

    def slot(self, path: Path) -> BackupSlot:
        """The slot for `path` (a plain file or none yet: links are refused before a backup is asked for)."""
        with self._lock:
            folder = self._by_parent.get(path.parent)
        if folder is not None:
            return BackupSlot(folder / f"{path.stem}.{self.stamp}{path.suffix}")
        slot = prepare_backup(path, stamp=self.stamp, backup_dir=self.backup_dir, root=self.root)
        with self._lock:
            self._by_parent[path.parent] = slot.target.parent
        return slot


def _hard_link(source: Path, link: Path) -> None:
    """A second name for `source` (for a symbolic link: for the link itself where the platform can)."""
    if os.link in os.supports_follow_symlinks:
        os.link(source, link, follow_symlinks=False)
    else:
        os.link(source, link)


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:
        return Path(path.name)


_ERRNO_REASONS = {
    errno.EACCES: "permission denied (read-only file or folder?)",
    errno.EPERM: "operation not permitted (read-only file or folder?)",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    getattr(errno, "EDQUOT", -2): "disk quota exceeded",
    errno.EISDIR: "it is a folder, not a file",
}


def describe_os_error(error: OSError) -> str:
    """A user's words for an OSError (the errno's meaning, not the exception's repr)."""
    reason = _ERRNO_REASONS.get(error.errno or -1)
    if reason is None:
        return error.strerror or str(error) or type(error).__name__
    return reason
