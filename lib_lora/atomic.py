"""Atomic file writes and renames: a hidden temp file beside the target, fsynced, then renamed over it; an atomic
swap of two names and a rename that never replaces, where the platform has them (Linux renameat2); one sync of a
whole file system for many files written at once, where it is as safe as an fsync of each (Linux syncfs)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .file_names import FolderLimits

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


def write_new(path: Path, chunks: Iterable[bytes | memoryview], *, mode: int | None = None) -> os.stat_result:
    """Create the file `path` (FileExistsError if there is one) holding `chunks`, fsynced; a failure leaves no file.
    `mode`: its permission bits (default 0666 less the umask). Returns its status once written.

    The folder is not synced: this is the first half of an atomic write, before the rename that needs it.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if mode is not None:
                _set_mode(f.fileno(), path, mode)
            os.fsync(f.fileno())
            return os.fstat(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _set_mode(descriptor: int, path: Path, mode: int) -> None:
    """chmod through the open file where the platform can (no path looked up again), else by path."""
    if os.chmod in os.supports_fd:
        os.chmod(descriptor, mode)
    else:
        os.chmod(path, mode)


def hidden_name(path: Path, tag: str, *, limits: FolderLimits | None = None) -> Path:
    """A fresh hidden name beside `path` (`.name.<random>.<tag>`), for a file on its way in or out; `limits`
    keeps each folder's name limit for the next call (a batch of files), else the file system is asked."""
    from .file_names import cut_to_bytes, encoded_length, name_limit  # the name is cut to fit the file system

    ending = f".{secrets.token_hex(6)}.{tag}"
    limit = name_limit(path.parent) if limits is None else limits.name_limit(path.parent)
    return path.with_name(f".{cut_to_bytes(path.name, limit - encoded_length(ending) - 1)}{ending}")


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
    return _libc_function("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint])


def sync_directory(folder: Path) -> None:
    """Make renames in `folder` durable where the platform allows it (not on Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


_WHOLE_SYNC_FILE_SYSTEMS = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0xF2F52010: "f2fs",
                            0x01021994: "tmpfs"}
"""statfs magic numbers of the local file systems whose syncfs writes every dirty file and flushes the disk's cache,
as fsync does for one file. Network and FUSE file systems are left out: their syncfs may stop short of the server's
disk, and some do nothing."""

_SYNCFS_REPORTS_ERRORS_FROM = (5, 8)
"""Linux before 5.8 returns success from syncfs even when a write failed."""


def syncs_whole_file_system(descriptor: int) -> bool:
    """Whether sync_file_system on `descriptor` makes every file written on its file system durable and reports a
    failed write, as an fsync of each would: Linux 5.8 or later on a local disk file system (ext4, xfs, btrfs, f2fs).
    Elsewhere (Windows, macOS, network and FUSE file systems) files are to be fsynced one by one."""
    if _syncfs_function() is None or _kernel_version() < _SYNCFS_REPORTS_ERRORS_FROM:
        return False
    return _file_system_magic(descriptor) in _WHOLE_SYNC_FILE_SYSTEMS


def sync_file_system(descriptor: int) -> None:
    """syncfs: every write on the file system of `descriptor` made durable. OSError when a write there failed since
    `descriptor` was opened or last synced, so open it before writing the files this sync is to cover."""
    function = _syncfs_function()
    if function is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    if function(descriptor) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@lru_cache(maxsize=1)
def _syncfs_function() -> Callable[[int], int] | None:
    """libc's syncfs (glibc 2.14+, musl) on Linux, or None."""
    return _libc_function("syncfs", [ctypes.c_int])


@lru_cache(maxsize=1)
def _fstatfs_function() -> Callable[[int, object], int] | None:
    """libc's fstatfs on Linux, or None."""
    return _libc_function("fstatfs", [ctypes.c_int, ctypes.c_void_p])


@lru_cache(maxsize=1)
def _kernel_version() -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release) if hasattr(os, "uname") else None
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _file_system_magic(descriptor: int) -> int | None:
    """The f_type of fstatfs(descriptor), or None where it cannot be read safely. struct statfs begins with f_type
    on every Linux architecture; on a little-endian one its first four bytes hold the magic number whatever the
    field's width (big-endian ones are not read)."""
    function = _fstatfs_function()
    if function is None or sys.byteorder != "little":
        return None
    buffer = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on x86_64
    if function(descriptor, buffer) != 0:
        return None
    return int.from_bytes(buffer.raw[:4], "little")


def _libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    """The C library's function `name` on Linux (errno kept for ctypes.get_errno), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function
