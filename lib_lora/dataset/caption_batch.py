"""Saving many captions at once (the Dataset tab's Save of 50,000 edits): overlapped, cancellable, never partial.

Each caption is saved as save_caption saves one (conflict check, a hidden staging file made durable, the atomic
swap of swap.install, the previous version moved to the backup folder), but in chunks of a few hundred files and
in three steps per chunk: every staging file is written, then all of them are made durable at once, then they are
swapped in. Only a durable staging file is ever swapped in, so every caption is the old file or the whole new one
at any moment; what one file needs once per folder is done once per folder (the backup folder is checked and made
once, each caption folder and backup folder fsynced once, after its last rename).

A chunk's files are read, staged and swapped in one after the other by one worker thread: that work is mostly
Python, and threads passing it between them file by file cost more than they overlap. Only the waits on the disk
run at once:
- where one sync of the whole file system is as safe as an fsync of each file (atomic.syncs_whole_file_system:
  Linux 5.8+ on ext4, xfs, btrfs, f2fs), one syncfs per file system and chunk, on a folder opened before the
  chunk was written so that a failed write since is reported (the chunk's files are then fsynced one by one to
  find which);
- elsewhere the files are fsynced at once by a pool of threads: an fsync makes the file system commit its
  journal, and fsyncs issued together share commits.
Measured on the 44,417-image set (2 cores, ext4, nothing else writing): 4 threads staging and swapping and 16
fsyncing, 15-17 s; one thread and 16 fsyncing, 10.0-11.2 s; one thread and a syncfs per chunk, 8.7-10.0 s.

Cancelling (or an unexpected error, or Ctrl+C in the calling thread) stops new files from being begun; the files
already staged finish, so every caption is the old file or the new one, and the result says which were saved,
which failed and which were not begun. A staging file is removed whenever its file cannot be finished.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..atomic import hidden_name, sync_directory, sync_file_system, syncs_whole_file_system
from ..file_names import FolderLimits
from .backups import BackupFolders, BackupSlot, describe_os_error
from .captions import (
    BatchSaveResult,
    CaptionChange,
    SaveFailure,
    SaveResult,
    _prepare,
    _Prepared,
    _put_in_place,
    _save,
    _timestamp,
)
from .errors import CaptionConflictError, CaptionWriteError, DatasetError
from .gc_pause import paused_gc

WRITERS = 16
"""Threads fsyncing a chunk's staging files at once: enough for the fsyncs to overlap (measured: 16 threads write
and fsync 2,000 small files 30x faster than one), few enough to stay light on memory."""

CHUNK = 256
"""Files staged, synced and swapped in together (each holds an open file until fsynced; fewer where the limit of
open files is low). Also how many files at most a cancel lets finish."""

PARALLEL_FROM = 32
"""Smaller batches are saved one file after the other in the calling thread (threads would cost more than they
save), so an error stops the batch at that file."""

_SKIPPED = object()


def save_many(
    changes: Sequence[CaptionChange],
    *,
    backup_dir: Path | None = None,
    root: Path | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    writers: int = WRITERS,
) -> BatchSaveResult:
    """save_captions' work (see its doc): results in the order of `changes`."""
    with paused_gc():  # several objects per file, 50,000 files: see gc_pause
        return _save_many(changes, backup_dir, root, force, progress, cancelled, writers)


def _save_many(changes: Sequence[CaptionChange], backup_dir: Path | None, root: Path | None, force: bool,
               progress: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None,
               writers: int) -> BatchSaveResult:
    seen: set[Path] = set()
    for change in changes:
        key = Path(change.path).absolute()
        if key in seen:
            raise DatasetError("the same caption appears twice in one save", path=change.path)
        seen.add(key)
    batch = _Batch(BackupFolders(stamp=_timestamp(), backup_dir=backup_dir, root=root), force, cancelled)
    outcomes: list[object] = [_SKIPPED] * len(changes)
    try:
        if writers <= 1 or len(changes) < PARALLEL_FROM:
            for index, change in enumerate(changes):
                outcomes[index] = batch.save_one(change, backup_dir, root)
                if progress is not None:
                    progress(index + 1, len(changes))
        else:
            _in_chunks(batch, changes, outcomes, progress, writers)
    finally:
        for folder in [*sorted(batch.touched), *batch.backups.folders]:
            sync_directory(folder)
    result = BatchSaveResult()
    for change, outcome in zip(changes, outcomes):
        if isinstance(outcome, SaveResult):
            result.saved.append(outcome)
        elif isinstance(outcome, SaveFailure):
            result.failed.append(outcome)
        else:
            result.skipped.append(Path(change.path))
    return result


def write_staging(path: Path, data: bytes, mode: int | None) -> int:
    """Create the staging file `path` (never replacing one) holding `data`, with permission bits `mode` (None: the
    usual 0666 less the umask), and return its open descriptor, not yet fsynced; a failure leaves no file.

    Our own rather than atomic.write_new, which fsyncs at once: here the fsyncs of a chunk are issued together."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        if mode is not None:
            if os.chmod in os.supports_fd:
                os.chmod(descriptor, mode)
            else:
                os.chmod(path, mode)
        return descriptor
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


@dataclass
class _Staged:
    """A prepared caption whose staging file is written (`descriptor` open until it is fsynced)."""

    prepared: _Prepared
    staging: Path
    slot: BackupSlot
    descriptor: int | None
    written: os.stat_result | None = None

    def discard(self) -> None:
        """Close and remove the staging file (a file that cannot be finished)."""
        if self.descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self.descriptor)
            self.descriptor = None
        with contextlib.suppress(OSError):
            os.unlink(self.staging)


class _Batch:
    """What the files of one save share: the backup folders, name limits, folders touched and the stop flag."""

    def __init__(self, backups: BackupFolders, force: bool, cancelled: Callable[[], bool] | None) -> None:
        self.backups, self.force, self.cancelled = backups, force, cancelled
        self.limits = FolderLimits()
        self.stop = threading.Event()
        self.touched: set[Path] = set()
        self._lock = threading.Lock()

    def stopping(self) -> bool:
        if not self.stop.is_set() and self.cancelled is not None and self.cancelled():
            self.stop.set()
        return self.stop.is_set()

    def wrote(self, path: Path) -> None:
        with self._lock:
            self.touched.add(path.parent)

    def save_one(self, change: CaptionChange, backup_dir: Path | None, root: Path | None) -> object:
        """One file saved whole, in the calling thread (small batches)."""
        if self.stopping():
            return _SKIPPED
        path = Path(change.path)
        try:
            result = _save(path, change.text, change.expected, backup_dir, root, self.force, self.backups.stamp,
                           backup=self.backups.slot, sync=False, limits=self.limits)
        except (CaptionConflictError, CaptionWriteError) as error:
            return SaveFailure(path, error)
        if result.wrote:
            self.wrote(path)
        return result

    def stage(self, change: CaptionChange) -> object:
        """Step 1: a _Staged file, a SaveResult (unchanged), a SaveFailure, or _SKIPPED once stopping."""
        if self.stopping():
            return _SKIPPED
        path = Path(change.path)
        try:
            prepared = _prepare(path, change.text, change.expected, self.force)
            if isinstance(prepared, SaveResult):
                return prepared
            slot = self.backups.slot(path)
            staging = hidden_name(path, "new", limits=self.limits)
            try:
                descriptor = write_staging(staging, prepared.data, prepared.mode)
            except OSError as error:
                raise CaptionWriteError(f"cannot write the caption: {describe_os_error(error)}", path=path) from error
        except (CaptionConflictError, CaptionWriteError) as error:
            return SaveFailure(path, error)
        except BaseException:
            self.stop.set()
            raise
        return _Staged(prepared, staging, slot, descriptor)

    @staticmethod
    def make_durable(staged: object, synced: bool = False) -> object:
        """Step 2: the staging file fsynced (unless `synced`: its file system was) and closed; a SaveFailure (its
        staging file removed) when it fails."""
        if not isinstance(staged, _Staged) or staged.descriptor is None:
            return staged
        try:
            if not synced:
                os.fsync(staged.descriptor)
            staged.written = os.fstat(staged.descriptor)
            os.close(staged.descriptor)
            staged.descriptor = None
        except OSError as error:
            staged.discard()
            return SaveFailure(staged.prepared.path, CaptionWriteError(
                f"cannot write the caption: {describe_os_error(error)}", path=staged.prepared.path))
        return staged

    def put_in_place(self, staged: object) -> object:
        """Step 3: the durable staging file swapped in (install removes it when it cannot)."""
        if not isinstance(staged, _Staged) or staged.written is None:
            return staged
        path = staged.prepared.path
        try:
            result = _put_in_place(staged.prepared, staged.staging, staged.written, staged.slot)
        except (CaptionConflictError, CaptionWriteError) as error:
            return SaveFailure(path, error)
        self.wrote(path)
        return result


def _in_chunks(batch: _Batch, changes: Sequence[CaptionChange], outcomes: list[object],
               progress: Callable[[int, int], None] | None, writers: int) -> None:
    """Save `changes` a chunk at a time, each chunk whole in one worker thread (_save_chunk); an exception raised
    while staging stops the batch and is raised once the files already staged are in place. When the calling
    thread is interrupted (Ctrl+C), the chunk under way still finishes before the interrupt goes on."""
    total, done = len(changes), 0
    size = max(PARALLEL_FROM, min(CHUNK, _open_files_limit() // 4))
    with _FileSystemSyncs() as file_systems, \
            ThreadPoolExecutor(max_workers=writers, thread_name_prefix="lora-studio-fsync") as syncers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-studio-save") as worker:
        for start in range(0, total, size):
            if batch.stopping():
                break
            indices = range(start, min(start + size, total))
            future = worker.submit(_save_chunk, batch, [changes[index] for index in indices], file_systems,
                                   syncers, writers)
            try:
                finished, error = future.result()
            except BaseException:
                batch.stop.set()
                _wait_for(future)  # the chunk under way finishes: nothing is left half-done
                raise
            for index, outcome in zip(indices, finished):
                outcomes[index] = outcome
                done += 1
                if progress is not None:
                    progress(done, total)
            if error is not None:
                raise error


def _wait_for(future: Future[object]) -> None:
    """Wait until `future` is done, through further interrupts (a second Ctrl+C)."""
    while not future.done():
        with contextlib.suppress(BaseException):
            future.result()


def _save_chunk(batch: _Batch, changes: Sequence[CaptionChange], file_systems: _FileSystemSyncs,
                syncers: ThreadPoolExecutor, threads: int) -> tuple[list[object], BaseException | None]:
    """Every file of one chunk staged, made durable, then swapped in, one after the other in this thread; the
    outcomes in order (_SKIPPED for those not begun) and the exception that stopped the staging, if one did.

    One thread: the work is mostly Python, and on two cores threads that pass it between them file by file cost
    more than they overlap (measured on the 44,417-image set: 4 threads 15-17 s, one 9-10 s)."""
    file_systems.watch(Path(change.path).parent for change in changes)  # before anything is written
    staged: list[object] = []
    error: BaseException | None = None
    for change in changes:
        try:
            staged.append(batch.stage(change))
        except BaseException as raised:  # raised by the caller once the files already staged are in place
            error = raised
            break
    staged += [_SKIPPED] * (len(changes) - len(staged))
    try:
        durable = _made_durable(staged, file_systems.sync([one for one in staged if isinstance(one, _Staged)]),
                                syncers, threads)
        finished = [batch.put_in_place(one) for one in durable]
    finally:
        for one in staged:
            if isinstance(one, _Staged) and one.written is None:
                one.discard()
    return finished, error


def _made_durable(staged: list[object], synced: set[int], syncers: ThreadPoolExecutor, threads: int) -> list[object]:
    """Each staged file closed where a sync of its file system made it durable, else fsynced, the fsyncs shared
    among the `threads` threads of `syncers` so that they are issued together (see the module's doc)."""
    durable = [_Batch.make_durable(one, synced=True) if id(one) in synced else one for one in staged]
    pending = [index for index, one in enumerate(durable) if isinstance(one, _Staged) and one.written is None]
    threads = max(1, min(threads, len(pending)))
    shares = [pending[offset::threads] for offset in range(threads)]
    for share, outcomes in zip(shares, syncers.map(lambda share: [_Batch.make_durable(durable[index])
                                                                     for index in share], shares)):
        for index, outcome in zip(share, outcomes):
            durable[index] = outcome
    return durable


class _FileSystemSyncs:
    """One descriptor per file system where a syncfs makes a chunk durable (atomic.syncs_whole_file_system), opened
    on a caption folder before the first staging file is written there, so that a failed write since is reported."""

    def __init__(self) -> None:
        self._device_of: dict[Path, int | None] = {}  # folder -> its file system's device, None: fsync each file
        self._descriptors: dict[int, int] = {}  # device -> a folder's descriptor to syncfs

    def __enter__(self) -> _FileSystemSyncs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for descriptor in self._descriptors.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._descriptors.clear()

    def watch(self, folders: Iterable[Path]) -> None:
        """Get ready to sync the file systems of `folders`, before their files are written."""
        for folder in folders:
            if folder not in self._device_of:
                self._device_of[folder] = self._open(folder)

    def _open(self, folder: Path) -> int | None:
        try:
            descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return None  # the files there fail or are fsynced one by one
        device = os.fstat(descriptor).st_dev
        if device not in self._descriptors and syncs_whole_file_system(descriptor):
            self._descriptors[device] = descriptor
            return device
        os.close(descriptor)
        return device if device in self._descriptors else None

    def sync(self, staged: Sequence[_Staged]) -> set[int]:
        """One syncfs per file system of `staged` where it serves; the ids of the files it made durable (the
        others, and all those of a file system whose sync reports a failure, are to be fsynced one by one)."""
        groups: dict[int, list[_Staged]] = {}
        for one in staged:
            device = self._device_of.get(one.prepared.path.parent)
            if device is not None and one.descriptor is not None:
                groups.setdefault(device, []).append(one)
        synced: set[int] = set()
        for device, files in groups.items():
            try:
                sync_file_system(self._descriptors[device])
            except OSError:
                continue  # an fsync of each file says which failed
            synced.update(id(one) for one in files)
        return synced


def _open_files_limit() -> int:
    """The process's limit of open files (where the platform has one to ask)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return 4 * CHUNK
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4 * CHUNK if soft == resource.RLIM_INFINITY else int(soft)
