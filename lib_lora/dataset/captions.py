"""Caption files that never lose data: exact reading, conflict-checked atomic saving, a backup of every overwrite.

Reading (`read_caption`): UTF-8, with or without a BOM, is the format every trainer reads. A file that is not
UTF-8 is decoded, in this order, as UTF-16 (only with a UTF-16 BOM), cp932 (Shift-JIS as Windows writes it, the
usual legacy encoding of our Japanese users) and cp1252 (Windows Western); `Caption.encoding` says which one
was used, so the UI can flag the file. Bytes none of them decodes, NUL bytes or a file over MAX_CAPTION_BYTES
raise CaptionReadError. A missing file is `None` (no caption). `Caption.text` has "\\n" line breaks and no
final line break; the file's style (CRLF or LF, BOM, final line break) is kept in the Caption.

Saving (`save_caption`, `save_captions`):
- Text equal to what is on disk writes nothing, so an unchanged caption stays byte-for-byte as it was.
- A changed caption keeps the file's line-break style, BOM and final line break (text passed to save is
  taken as Caption.text is: a final line break is added when the file had one, unless the text ends with one);
  it is always written as
  UTF-8 (a legacy-encoded file is converted on its first save; `SaveResult.converted_from` says so, and the
  backup keeps the original bytes). A new file is UTF-8 without BOM, LF, ending with a line break.
- The save is refused with CaptionConflictError when the file on disk is not what `expected` describes (its
  content changed, it was deleted, or it appeared while `expected` is None), unless `force=True`.
- The previous content is first copied to `<backup root>/<path relative to root>` with the stem suffixed by a
  UTC timestamp: `<root>/.lora_studio_backup/3_char/a.20250101T120000123456Z.txt`. The backup root defaults to
  `<root>/.lora_studio_backup`, and `root` to the caption's own folder. A backup is never overwritten (a
  counter is added on a clash).
- The new content is written to a temporary file, fsynced and renamed over the old one
  (`lib_lora.atomic.write_atomically`): readers see the old file or the new one, never a part. An OSError
  (read-only folder, full disk, ...) raises CaptionWriteError and leaves the old file as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from lib_lora.atomic import write_atomically

from .errors import CaptionConflictError, CaptionReadError, CaptionWriteError, DatasetError

BACKUP_DIR_NAME = ".lora_studio_backup"
"""Folder (under the dataset root) holding the previous versions of overwritten captions; scans skip it."""

MAX_CAPTION_BYTES = 1 << 20
"""A caption file larger than this (1 MiB) is refused as not a caption."""

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LEGACY_ENCODINGS = ("cp932", "cp1252")


@dataclass(frozen=True)
class Caption:
    """A caption as read from disk: the text plus what is needed to write it back in the same style and to
    notice a change on disk (mtime_ns, size and the SHA-256 `digest` of the bytes)."""

    text: str
    newline: str
    bom: bool
    encoding: str
    mtime_ns: int
    size: int
    digest: str
    final_newline: bool = False

    @property
    def legacy_encoding(self) -> bool:
        """Whether the file is not UTF-8 (it will be converted to UTF-8 when saved)."""
        return self.encoding != "utf-8"


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
    """Outcome of save_captions: every file is either in `saved` (old or new content, never a mix) or
    `failed` with the reason; `failed` files were left as they were."""

    saved: list[SaveResult] = field(default_factory=list)
    failed: list[SaveFailure] = field(default_factory=list)

    @property
    def written(self) -> list[Path]:
        return [result.path for result in self.saved if result.wrote]

    @property
    def ok(self) -> bool:
        return not self.failed


def digest_bytes(data: bytes) -> str:
    """The digest a Caption records for file content `data` (SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def decode_caption_bytes(data: bytes) -> tuple[str, str, bool]:
    """(text as stored, encoding name, had a UTF-8 BOM) for caption bytes; CaptionReadError (no path) if none fits."""
    if data.startswith(_UTF8_BOM):
        candidates: tuple[str, ...] = ("utf-8",)
        body, bom = data[len(_UTF8_BOM):], True
    elif data.startswith(_UTF16_BOMS):
        candidates, body, bom = ("utf-16",), data, False
    else:
        candidates, body, bom = ("utf-8", *_LEGACY_ENCODINGS), data, False
    for encoding in candidates:
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" in text:
            raise CaptionReadError(f"contains NUL characters: not a text file (read as {encoding})")
        return text, encoding, bom
    raise CaptionReadError(
        "not text in UTF-8, UTF-16, cp932 (Shift-JIS) or cp1252: cannot decode it without losing characters"
    )


def parse_caption(data: bytes, *, mtime_ns: int = 0) -> Caption:
    """The Caption for file content `data` (style detected, one final line break moved into final_newline)."""
    raw, encoding, bom = decode_caption_bytes(data)
    crlf = raw.count("\r\n")
    newline = "\r\n" if crlf and crlf == raw.count("\n") == raw.count("\r") else "\n"
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    final_newline = text.endswith("\n")
    if final_newline:
        text = text[:-1]
    return Caption(
        text=text, newline=newline, bom=bom, encoding=encoding, mtime_ns=mtime_ns, size=len(data),
        digest=digest_bytes(data), final_newline=final_newline,
    )


def encode_caption(text: str, style: Caption | None) -> bytes:
    """The UTF-8 bytes that store `text` in the style of `style` (None: LF, no BOM, final line break).

    A final line break is added when the style has one, unless `text` already ends with a line break.
    """
    body = normalise_line_breaks(text)
    if (style is None or style.final_newline) and not body.endswith("\n"):
        body += "\n"
    if style is not None and style.newline != "\n":
        body = body.replace("\n", style.newline)
    prefix = _UTF8_BOM if style is not None and style.bom else b""
    return prefix + body.encode("utf-8")


def normalise_line_breaks(text: str) -> str:
    """`text` with CRLF and lone CR line breaks made "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalise_text(text: str) -> str:
    """Caption text as reading its file back gives it: "\\n" line breaks and no final line break."""
    text = normalise_line_breaks(text)
    return text[:-1] if text.endswith("\n") else text


def read_caption(path: Path) -> Caption | None:
    """The caption stored at `path`, or None when there is no such file; CaptionReadError when unreadable."""
    path = Path(path)
    try:
        data, mtime_ns = _read_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CaptionReadError(f"cannot read the caption: {_describe_os_error(error)}", path=path) from error
    try:
        return parse_caption(data, mtime_ns=mtime_ns)
    except CaptionReadError as error:
        raise CaptionReadError(error.reason, path=path) from None


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
) -> BatchSaveResult:
    """Save each change as save_caption does; a refused or failed file is reported and the others go on.

    Every file ends up old or new, never partial, even when an unexpected exception stops the batch. All
    backups of one batch share one timestamp.
    """
    changes = list(changes)
    seen: set[Path] = set()
    for change in changes:
        key = Path(change.path).absolute()
        if key in seen:
            raise DatasetError("the same caption appears twice in one save", path=change.path)
        seen.add(key)
    stamp = _timestamp()
    result = BatchSaveResult()
    for change in changes:
        try:
            result.saved.append(_save(Path(change.path), change.text, change.expected, backup_dir, root, force, stamp))
        except (CaptionConflictError, CaptionWriteError) as error:
            result.failed.append(SaveFailure(Path(change.path), error))
    return result


def _save(
    path: Path, text: str, expected: Caption | None, backup_dir: Path | None, root: Path | None, force: bool,
    stamp: str,
) -> SaveResult:
    try:
        current_bytes, _ = _read_bytes(path)
    except FileNotFoundError:
        current_bytes = None
    except OSError as error:
        raise CaptionWriteError(
            f"cannot read the current caption to back it up: {_describe_os_error(error)}", path=path
        ) from error
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
    backup = None
    if current_bytes is not None:
        backup = _write_backup(path, current_bytes, backup_dir, root, stamp)
    try:
        write_atomically(path, [new_bytes])
    except OSError as error:
        if backup is not None:
            backup.unlink(missing_ok=True)  # nothing was overwritten, so the copy is not needed
        raise CaptionWriteError(f"cannot write the caption: {_describe_os_error(error)}", path=path) from error
    caption = _restat(path, parse_caption(new_bytes))
    converted = style.encoding if style is not None and style.legacy_encoding else None
    return SaveResult(
        path=path, status="created" if current_bytes is None else "written", caption=caption, backup=backup,
        converted_from=converted,
    )


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


def _read_bytes(path: Path) -> tuple[bytes, int]:
    """The file's content and mtime_ns read from one open file; OSError for a directory or an oversized file."""
    with open(path, "rb") as f:
        status = os.fstat(f.fileno())
        if status.st_size > MAX_CAPTION_BYTES:
            raise OSError(errno.EFBIG, f"{status.st_size} bytes is too large for a caption (limit {MAX_CAPTION_BYTES})")
        return f.read(MAX_CAPTION_BYTES + 1), status.st_mtime_ns


def _restat(path: Path, caption: Caption) -> Caption:
    """`caption` with the file's current mtime (used as `expected` next time)."""
    try:
        return replace(caption, mtime_ns=path.stat().st_mtime_ns)
    except OSError:
        return caption


def backup_path_for(path: Path, *, stamp: str, backup_dir: Path | None = None, root: Path | None = None) -> Path:
    """Where the backup of `path` taken at `stamp` goes (before any clash counter is added)."""
    base = Path(root) if root is not None else path.parent
    folder = Path(backup_dir) if backup_dir is not None else base / BACKUP_DIR_NAME
    try:
        relative = path.resolve().relative_to(base.resolve())
    except ValueError:
        relative = Path(path.name)
    return folder / relative.parent / f"{relative.stem}.{stamp}{relative.suffix}"


def _write_backup(path: Path, data: bytes, backup_dir: Path | None, root: Path | None, stamp: str) -> Path:
    """Copy `data` to a new backup file (never overwriting one); CaptionWriteError when that is impossible."""
    target = backup_path_for(path, stamp=stamp, backup_dir=backup_dir, root=root)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = target if attempt == 0 else target.with_name(f"{target.stem}-{attempt}{target.suffix}")
            try:
                handle = open(candidate, "xb")
            except FileExistsError:
                continue
            try:
                with handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                candidate.unlink(missing_ok=True)
                raise
            return candidate
        raise OSError(errno.EEXIST, "1000 backups with the same timestamp already exist")
    except OSError as error:
        raise CaptionWriteError(
            f"cannot back up the caption to {target.parent}: {_describe_os_error(error)}; nothing was changed",
            path=path,
        ) from error


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


_ERRNO_REASONS = {
    errno.EACCES: "permission denied (read-only file or folder?)",
    errno.EPERM: "operation not permitted (read-only file or folder?)",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    getattr(errno, "EDQUOT", -2): "disk quota exceeded",
    errno.EISDIR: "it is a folder, not a file",
}


def _describe_os_error(error: OSError) -> str:
    reason = _ERRNO_REASONS.get(error.errno or -1)
    if reason is None:
        return error.strerror or str(error) or type(error).__name__
    return reason
