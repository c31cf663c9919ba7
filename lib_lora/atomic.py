"""Atomic file writes and renames: a hidden temp file beside the target, fsynced, then renamed over it; an atomic
swap of two names and a rename that never replaces, where the platform has them (Linux renameat2)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, getattr(errno, "ENOTSUP", -3),
                getattr(errno, "EOPNOTSUPP", -4)}
_refused_flags: set[int] = set()
"""Flags the kernel does not know (ENOSYS): not tried again. EINVAL depends on the file system, so it is not kept."""


def write_atomically(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write `chunks` to `path` so readers see the old file or the whole new one; no temp file outlives a failure.

    A file already at `path` keeps its permission bits (a new one gets the usual 0666 less the umask).
    """
    temp = hidden_name(path, "tmp")
    write_new(temp, chunks)
    try:
        keep_mode(temp, path)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    sync_directory(path.parent)


def write_new(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Create the file `path` (FileExistsError if there is one) holding `chunks`, fsynced; a failure leaves no file.

    The folder is not synced: this is the first half of an atomic write, before the rename that needs it.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def hidden_name(path: Path, tag: str) -> Path:
    """A fresh hidden name beside `path` (`.name.<random>.<tag>`), for a file on its way in or out."""
    from .file_names import cut_to_bytes, encoded_length, name_limit  # the name is cut to fit the file system

    ending = f".{secrets.token_hex(6)}.{tag}"
    return path.with_name(f".{cut_to_bytes(path.name, name_limit(path.parent) - encoded_length(ending) - 1)}{ending}")


def keep_mode(temp: Path, path: Path) -> None:
    """Give `temp` the permission bits of the file at `path`, if there is one."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except (FileNotFoundError, NotADirectoryError):
        return
    os.chmod(temp, mode)


def exchange(first: Path, second: Path) -> bool:
    """Swap the names `first` and `second` (both must exist) in one atomic step, so each name always names a file.

    Returns False, changing nothing, where the platform or file system cannot (or the two are on different file
    systems); FileNotFoundError when a name is missing and other OSErrors as the rename gives them.
    """
    return _renameat2(first, second, _RENAME_EXCHANGE)


def rename_noreplace(source: Path, target: Path) -> bool:
    """Rename `source` to `target` unless `target` exists (FileExistsError), atomically.

    Returns False, changing nothing, where the platform or file system cannot (or across file systems).
    """
    return _renameat2(source, target, _RENAME_NOREPLACE)


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    call = _renameat2_function()
    if call is None or flags in _refused_flags:
        return False
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOSYS:
        _refused_flags.add(flags)
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))



@lru_cache(maxsize=1)
def _renameat2_function() -> Callable[..., int] | None:
    """libc's renameat2 (glibc 2.28+, musl), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def sync_directory(folder: Path) -> None:
    """Make renames in `folder` durable where the platform allows it (not on Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
