"""Caption files that never lose data: conflict-checked atomic saving, a backup of every overwrite.

Reading, and the Caption that describes a file's text and style, are caption_format's.

Saving (`save_caption`, `save_captions`):
- Text equal to what is on disk writes nothing, so an unchanged caption stays byte-for-byte as it was.
- A changed caption keeps the file's line-break style, BOM and final line break (text passed to save is
  taken as Caption.text is: a final line break is added when the file had one, unless the text ends with one);
  it is always written as
  UTF-8 (a legacy-encoded file is converted on its first save; `SaveResult.converted_from` says so, and the
  backup keeps the original bytes). A new file is UTF-8 without BOM, LF, ending with a line break.
- The save is refused with CaptionConflictError when the file on disk is not what `expected` describes (its
  content changed, it was deleted, or it appeared while `expected` is None), unless `force=True`. That check is
  made again at the very moment the new file goes in (`swap.install`): a version another program wrote during
  the save stays in place (or, at worst, in the backup folder) and the save reports the conflict.
- The new content is written to a hidden file beside the caption, fsynced, and swapped in atomically: readers
  see the old file or the new one, never a part. The file it replaces is moved to `<backup root>/<path relative
  to root>` with the stem suffixed by a UTC timestamp: `<root>/.lora_studio_backup/3_char/a.20250101T120000123456Z.txt`
  (`backups.py`). The backup root defaults to `<root>/.lora_studio_backup`, and `root` to the caption's own
  folder. A backup is never overwritten (a counter is added on a clash).
- The new file keeps the old one's permission bits. A read-only caption, a caption that is a link (never written
  through or replaced) and a backup folder leading elsewhere through a link raise CaptionWriteError, as does an
  OSError (read-only folder, full disk, ...); the file is then left as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from lib_lora.atomic import hidden_name, sync_directory, write_new
from lib_lora.file_names import FolderLimits

from .backups import BackupSlot, describe_os_error, prepare_backup
from .caption_format import (
    MAX_CAPTION_BYTES,
    Caption,
    digest_bytes,
    encode_caption,
    normalise_line_breaks,
    parse_caption,
    read_file_bytes,
)
from .errors import CaptionConflictError, CaptionReadError, CaptionWriteError, DatasetError
from .swap import Accept, install


@dataclass(frozen=True)
class SaveResult:
    """What save_caption did: `status` is "created", "written" or "unchanged" (nothing written); `caption`
    describes the file now on disk (pass it as `expected` to the next save)."""

    path: Path
    status: str
    caption: Caption
    backup: Path | None = None
    converted_from: str | None = None

    @property
    def wrote(self) -> bool:
        return self.status != "unchanged"


@dataclass(frozen=True)
class CaptionChange:
    """One caption to save: the new text and the Caption it was edited from (None: the file did not exist)."""

    path: Path
    text: str
    expected: Caption | None


@dataclass(frozen=True)
class SaveFailure:
    path: Path
    error: DatasetError


@dataclass
class BatchSaveResult:
    """Outcome of save_captions: every file is either in `saved` (old or new content, never a mix), `failed` with
    the reason or `skipped` (cancelled before it was begun); `failed` and `skipped` files were left as they were."""

    saved: list[SaveResult] = field(default_factory=list)
    failed: list[SaveFailure] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    """Files not begun because the batch was cancelled: left as they were."""

    @property
    def written(self) -> list[Path]:
        return [result.path for result in self.saved if result.wrote]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def save_caption(
    path: Path,
    text: str,
    *,
    expected: Caption | None,
    backup_dir: Path | None = None,
    root: Path | None = None,
    force: bool = False,
) -> SaveResult:
    """Write `text` to the caption file `path` atomically, backing up what it replaces (see the module doc).

    Raises CaptionConflictError when the file is not as `expected` (unless force) and CaptionWriteError when
    the write fails; in both cases the file is left as it was.
    """
    return _save(Path(path), text, expected, backup_dir, root, force, _timestamp())


def save_captions(
    changes: Iterable[CaptionChange],
    *,
    backup_dir: Path | None = None,
    root: Path | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> BatchSaveResult:
    """Save each change as save_caption does; a refused or failed file is reported and the others go on.

    Every file ends up old or new, never partial, even when an unexpected exception or `cancelled()` stops the
    batch (the files not begun are listed in `skipped`). All backups of one batch share one timestamp. The files
    are written in chunks, each chunk made durable at once (one sync of the file system where that is as safe,
    else its fsyncs issued together), and each folder is synced once at the end; `progress(done, total)` is called
    as files finish (see caption_batch).
    """
    from .caption_batch import save_many  # it builds on _prepare, _put_in_place and _save below

    return save_many(list(changes), backup_dir=backup_dir, root=root, force=force, progress=progress,
                     cancelled=cancelled)


def _save(
    path: Path, text: str, expected: Caption | None, backup_dir: Path | None, root: Path | None, force: bool,
    stamp: str, *, backup: Callable[[Path], BackupSlot] | None = None, sync: bool = True,
    limits: FolderLimits | None = None,
) -> SaveResult:
    """One caption saved (see save_caption); `backup` gives its backup slot (default: prepare_backup), with
    sync=False the caller syncs the caption's folder and the backup's (a batch does it once per folder), and
    `limits` keeps each folder's name limit (a batch asks once per folder)."""
    prepared = _prepare(path, text, expected, force)
    if isinstance(prepared, SaveResult):
        return prepared
    slot = prepare_backup(path, stamp=stamp, backup_dir=backup_dir, root=root) if backup is None else backup(path)
    staging = hidden_name(path, "new", limits=limits)
    try:
        written = write_new(staging, [prepared.data], mode=prepared.mode)
    except BaseException as error:
        staging.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CaptionWriteError(f"cannot write the caption: {describe_os_error(error)}", path=path) from error
        raise
    result = _put_in_place(prepared, staging, written, slot)
    if sync:
        sync_directory(path.parent)
    return result


@dataclass(frozen=True)
class _Prepared:
    """A changed caption, checked and encoded, before its staging file is written: the bytes, the permission bits
    to give them (None: a new file), what the file in place may be to be replaced, the legacy encoding left."""

    path: Path
    data: bytes
    mode: int | None
    accept: Accept
    converted_from: str | None


def _prepare(path: Path, text: str, expected: Caption | None, force: bool) -> SaveResult | _Prepared:
    """The first half of a save: the file on disk read and checked against `expected` (unless `force`), the new
    bytes encoded in its style; a SaveResult "unchanged" when they are what the file holds."""
    current_bytes, status = _read_current(path)
    if not force:
        _check_unchanged(path, current_bytes, expected)
    current = _parse_or_none(current_bytes)
    text = normalise_line_breaks(text)
    if current is not None and current.text == text:
        return SaveResult(path=path, status="unchanged", caption=_restat(path, current))
    style = current or expected
    new_bytes = _encode_for_save(path, text, style)
    if current is not None and new_bytes == current_bytes:  # e.g. "a, b\n" for a file holding "a, b\n"
        return SaveResult(path=path, status="unchanged", caption=_restat(path, current))
    if status is not None:
        _check_writable(path, status)
    converted = style.encoding if style is not None and style.legacy_encoding else None
    mode = None if status is None else stat.S_IMODE(status.st_mode) & 0o777
    return _Prepared(path, new_bytes, mode, _acceptor(expected, force), converted)


def _put_in_place(prepared: _Prepared, staging: Path, written: os.stat_result, slot: BackupSlot) -> SaveResult:
    """The second half: the durable staging file swapped in (swap.install), what it replaced backed up."""
    path = prepared.path
    try:
        backup = install(path, staging, prepared.data, prepared.accept, slot, limit=MAX_CAPTION_BYTES)
    except OSError as error:
        raise CaptionWriteError(f"cannot write the caption: {describe_os_error(error)}", path=path) from error
    caption = replace(parse_caption(prepared.data), mtime_ns=written.st_mtime_ns)  # a rename keeps the mtime
    return SaveResult(
        path=path, status="created" if backup is None else "written", caption=caption, backup=backup,
        converted_from=prepared.converted_from,
    )


def _acceptor(expected: Caption | None, force: bool) -> Accept:
    """What the file in place may be for the save to replace it: anything with force, else what was expected."""
    if force:
        return lambda found: True
    if expected is None:
        return lambda found: found is None
    return lambda found: found is not None and digest_bytes(found) == expected.digest


def _read_current(path: Path) -> tuple[bytes | None, os.stat_result | None]:
    """The caption file's bytes and status, (None, None) when absent; CaptionWriteError for a link or a file
    that cannot be read (links are never followed: the file written is the one in the dataset folder)."""
    try:
        try:  # one open that refuses a link (where the platform can) and one fstat: no lstat/stat by path
            data, status = read_file_bytes(path, follow=False)
        except OSError:
            if os.path.islink(path):
                raise CaptionWriteError(
                    f"the caption file is a link to {_shorten(os.readlink(path))}; links are not written through or "
                    "replaced, so it was left as it is (replace it with a plain file to save it)", path=path,
                ) from None
            raise
        if stat.S_ISLNK(status.st_mode) or not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):
            raise CaptionWriteError("the caption file is a link; links are not written through or replaced, so it "
                                    "was left as it is (replace it with a plain file to save it)", path=path)
        return data, status
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise CaptionWriteError(
            f"cannot read the current caption to back it up: {describe_os_error(error)}", path=path
        ) from error


def _check_writable(path: Path, status: os.stat_result) -> None:
    """CaptionWriteError for a read-only caption file (mode without the owner's write bit, or not ours to write)."""
    if status.st_mode & stat.S_IWUSR and os.access(path, os.W_OK):
        return
    raise CaptionWriteError(
        f"the caption file is read-only (mode {stat.S_IMODE(status.st_mode):04o}); it was left as it is "
        "(make it writable to save it)", path=path,
    )


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def _encode_for_save(path: Path, text: str, style: Caption | None) -> bytes:
    """encode_caption, refusing text no caption file can hold (NUL characters, lone surrogates)."""
    if "\x00" in text:
        raise CaptionWriteError("the text contains NUL characters; nothing was written", path=path)
    try:
        return encode_caption(text, style)
    except UnicodeEncodeError as error:
        raise CaptionWriteError(f"the text cannot be stored as UTF-8 ({error.reason}); nothing was written",
                                path=path) from error


def _check_unchanged(path: Path, current: bytes | None, expected: Caption | None) -> None:
    if expected is None and current is not None:
        raise CaptionConflictError(
            "a caption file appeared on disk after the dataset was read; reload it to see its content", path=path
        )
    if expected is not None and current is None:
        raise CaptionConflictError("the caption file was deleted on disk after it was read", path=path)
    if expected is not None and current is not None and digest_bytes(current) != expected.digest:
        raise CaptionConflictError(
            f"the caption changed on disk after it was read ({expected.size} -> {len(current)} bytes); "
            "reload it, or save with force to overwrite (the current file is backed up)",
            path=path,
        )


def _parse_or_none(data: bytes | None) -> Caption | None:
    """The current file's Caption; None when absent or undecodable (then it is overwritten in the new style)."""
    if data is None:
        return None
    try:
        return parse_caption(data)
    except CaptionReadError:
        return None


def _restat(path: Path, caption: Caption) -> Caption:
    """`caption` with the file's current mtime (used as `expected` next time)."""
    try:
        return replace(caption, mtime_ns=path.stat().st_mtime_ns)
    except OSError:
        return caption


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
