"""Names the file system can hold: its limits, checks of every output before any work, OS errors in user words.

Limits are in bytes of the encoded name (`os.fsencode`: UTF-8 on Linux and macOS), read from the folder's own file
system: `os.pathconf(folder, "PC_NAME_MAX")` for one name (255 where the platform cannot say) and "PC_PATH_MAX"
for a whole path (4096; 260 on Windows). Commands check every file they will write with `check_output_files`
and `check_writable_folder` before loading a model or training, so no work is lost to a name at the end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from .errors import LoraStudioError
from .wording import echo, shorten

DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 260 if os.name == "nt" else 4096
SHOWN = 80
"""The most characters of a value or a name an error message repeats here (long names are the point of it)."""

_HINTS = {
    errno.ENAMETOOLONG: "use a shorter file or folder name",
    errno.EACCES: "check its permissions, or choose another folder",
    errno.EPERM: "check its permissions, or choose another folder",
    errno.EROFS: "the file system is read-only: choose a folder elsewhere",
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOENT: "check the path",
    errno.EEXIST: "choose another name",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "your disk quota is used up: free some space or choose a folder elsewhere"


class FileNameError(LoraStudioError):
    """A file a command would write has a name or path its file system cannot hold, or its folder cannot be
    written; the message names the option, its value and the fix."""


def encoded_length(name: str) -> int:
    """The bytes `name` takes on this system's file systems."""
    return len(os.fsencode(name))


def existing_folder(path: str | os.PathLike[str]) -> Path:
    """`path` itself when it exists (a file too), else the nearest folder above it that does."""
    current = Path(os.path.abspath(path))
    while True:
        try:
            if current.exists():
                return current
        except (OSError, ValueError):  # a part too long or otherwise unusable: look higher up
            pass
        if current.parent == current:
            return current
        current = current.parent


def name_limit(folder: str | os.PathLike[str]) -> int:
    """The most bytes one file name may have in `folder` (or where it will be created)."""
    return _pathconf(folder, "PC_NAME_MAX", DEFAULT_NAME_MAX)


class FolderLimits:
    """name_limit per folder, asked of the file system once per folder: what a batch writing 50,000 files into
    a few folders uses (two system calls a file saved). Safe to share between threads."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._asking = threading.Lock()  # the writer threads of a batch miss the same folder at once

    def name_limit(self, folder: str | os.PathLike[str]) -> int:
        key = os.fspath(folder)
        limit = self._names.get(key)
        if limit is None:
            with self._asking:
                limit = self._names.get(key)
                if limit is None:
                    limit = self._names[key] = name_limit(folder)
        return limit


def path_limit(folder: str | os.PathLike[str]) -> int:
    """The most bytes a whole path may have on `folder`'s file system."""
    return _pathconf(folder, "PC_PATH_MAX", DEFAULT_PATH_MAX)


def _pathconf(folder: str | os.PathLike[str], key: str, default: int) -> int:
    try:
        value = os.pathconf(existing_folder(folder), key)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf; some file systems cannot say
        return default
    return value if isinstance(value, int) and value > 0 else default


def cut_to_bytes(name: str, limit: int) -> str:
    """The longest start of `name` that encodes in at most `limit` bytes (never splitting a character)."""
    if encoded_length(name) <= limit:
        return name
    low, high = 0, len(name)
    while low < high:
        middle = (low + high + 1) // 2
        if encoded_length(name[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return name[:low]


def check_output_files(files: Iterable[str | os.PathLike[str]], *, option: str, value: object) -> None:
    """FileNameError, before any work, when a file of `files` (or a folder on its way not made yet) has a name
    longer than its file system allows, a path longer than the path limit, or a NUL character.

    `option` and `value` are what the user set that names the files (e.g. output_name, --out); the message says
    how many bytes the longest name would take, the limit, and how long the option may be.
    """
    text_value = os.fspath(value) if isinstance(value, os.PathLike) else value
    shown = echo(text_value, SHOWN)
    worst: tuple[int, str, Path, int] | None = None  # bytes over, the name, the folder it goes in, the limit
    long_path: tuple[Path, int] | None = None
    for file in files:
        text = os.fspath(file)
        if "\0" in text:
            raise FileNameError(f"{option} = {shown}: contains a NUL character, which no file name may hold")
        path = Path(os.path.abspath(text))
        base = existing_folder(path.parent)
        limit = name_limit(base)
        for part in _new_parts(path, base):
            over = encoded_length(part) - limit
            if over > 0 and (worst is None or over > worst[0]):
                worst = (over, part, base, limit)
        total = path_limit(base)
        if long_path is None and encoded_length(str(path)) > total:
            long_path = (path, total)
    if worst is not None:
        over, part, base, limit = worst
        room = encoded_length(str(text_value)) - over
        if str(text_value) not in part:  # a path: the name in it is what must change
            fix = f"use a name of at most {limit} bytes there"
        elif room > 0:  # a name the files are named after (output_name): what it may take
            fix = f"shorten {option} to at most {room} bytes"
        else:
            fix = f"choose a shorter {option}"
        raise FileNameError(f"{option} = {shown}: it would write {shorten(part, SHOWN)}, a name of "
                            f"{encoded_length(part)} bytes; the file system of {shorten(str(base))} allows {limit}: "
                            f"{fix}")
    if long_path is not None:
        path, total = long_path
        raise FileNameError(f"{option} = {shown}: the path {shorten(str(path), SHOWN)} would be "
                            f"{encoded_length(str(path))} bytes, more than the {total} this system allows; "
                            f"use a shorter {option} or a folder nearer the root")


def _new_parts(path: Path, base: Path) -> list[str]:
    """The names in `path` below the existing folder `base` (the folders to create and the file)."""
    try:
        return list(path.relative_to(base).parts) or [path.name]
    except ValueError:
        return [path.name]


def check_writable_folder(folder: str | os.PathLike[str], *, option: str, value: object = None) -> None:
    """FileNameError when files cannot be created in `folder` (or, when it does not exist yet, in the folder
    above it that does): not a folder, permission, read-only, no space. Probes with a file it removes again.
    `option` = `value` is what the user set (the folder itself by default)."""
    value = folder if value is None else value
    shown = echo(os.fspath(value) if isinstance(value, os.PathLike) else value, SHOWN)
    base = existing_folder(folder)
    if not base.is_dir():
        raise FileNameError(f"{option} = {shown}: {shorten(str(base))} is a file, not a folder")
    probe = base / f".lora-studio-probe-{secrets.token_hex(6)}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise FileNameError(f"{option} = {shown}: cannot write in {shorten(str(base))}: "
                            f"{cause_of(error)}") from error
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def cause_of(error: OSError) -> str:
    """The OS's words for `error` and, where one helps, what to do about it."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = _HINTS.get(error.errno or 0)
    return f"{reason} ({hint})" if hint else reason


def describe_os_error(error: OSError) -> str:
    """One line for an OSError that reached a command's edge: the path(s) it concerns, then its cause."""
    paths = [shorten(os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name))
             for name in (error.filename, error.filename2) if name is not None]
    where = " -> ".join(paths)
    return f"{where}: {cause_of(error)}" if where else cause_of(error)
