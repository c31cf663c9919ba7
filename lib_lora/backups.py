"""Backups of files about to be replaced: what an overwrite replaces stays in `.lora_studio_backup/` beside it.

`<folder>/name.safetensors` is kept as `<folder>/.lora_studio_backup/name.<UTC time>.safetensors.bak` (the `.bak`
ending keeps WebUIs from listing a backup as a LoRA or image; rename it to restore). The backup is a hard link
where the file system allows (no copy: every write of ours replaces the file by a rename, so the link keeps the
old bytes), else a copy. A backup never overwrites another one. Used by every edge that overwrites: the Train
tab and `train --force` (through the run's saves), the `lora` tools, `generate` and `blocks --force`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import LoraStudioError
from .file_names import cause_of, cut_to_bytes, encoded_length, name_limit
from .wording import shorten

BACKUP_DIR_NAME = ".lora_studio_backup"
BACKUP_SUFFIX = ".bak"


class BackupError(LoraStudioError):
    """The file to be replaced could not be backed up, so it was not replaced."""


def backup_stamp() -> str:
    """UTC time to the microsecond, e.g. 20250101T120000123456Z (sorts by time)."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1_000_000):06d}Z"


def backup_path(path: str | os.PathLike[str], stamp: str, *, number: int = 0) -> Path:
    """Where `path`'s backup of time `stamp` goes (`number` > 0 on a clash), its stem cut to fit the name limit."""
    path = Path(path)
    folder = path.parent / BACKUP_DIR_NAME
    ending = f".{stamp}{f'-{number}' if number else ''}{path.suffix}{BACKUP_SUFFIX}"
    stem = cut_to_bytes(path.stem, max(1, name_limit(path.parent) - encoded_length(ending)))
    return folder / f"{stem}{ending}"


def back_up(path: str | os.PathLike[str], *, stamp: str | None = None) -> Path | None:
    """Keep the file at `path` before it is replaced (see the module docstring); None when there is no file.

    BackupError when it cannot be kept (then the caller must not replace it).
    """
    path = Path(path)
    if not path.is_file():
        return None
    stamp = stamp or backup_stamp()
    try:
        (path.parent / BACKUP_DIR_NAME).mkdir(exist_ok=True)
        for number in range(1000):
            target = backup_path(path, stamp, number=number)
            if not os.path.lexists(target):
                break
        else:
            raise FileExistsError(f"{target}: too many backups of the same time")
        try:
            os.link(path, target)
        except OSError:  # no hard links here (FAT, some network file systems): copy instead
            try:
                shutil.copy2(path, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    target.unlink()
                raise
    except OSError as error:
        raise BackupError(f"cannot back up {shorten(str(path))} before replacing it, so it was kept as it is: "
                          f"{cause_of(error)}") from error
    return target


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, stamp: str | None = None) -> Iterator[Path | None]:
    """Back up `path` (when it exists) for a write in the block; the backup is removed again when the block fails,
    since an atomic write that failed left the old file in place."""
    backup = back_up(path, stamp=stamp)
    try:
        yield backup
    except BaseException:
        if backup is not None:
            with contextlib.suppress(OSError):
                backup.unlink()
        raise
