"""The writer of a tagging run: one thread that takes the model's finished batches through a bounded queue and
hands them, grouped, to the run's `handle` (journal, save, report), with a pool for the saves' fsyncs.

Bounded: when the disk is slower than the model, the model runs wait at `put` instead of piling up scores (10,000
floats an image) for the whole folder, so memory stays flat at 50,000 images and Cancel takes effect within a
few batches. Grouped: whatever has queued up meanwhile (up to `group_images` images) is handled at once, so the
journal is fsynced once per group and the group's captions are saved by `SAVERS` threads whose fsyncs overlap.
An error in `handle` is kept (`error`), later batches are dropped so no model run waits forever, and the run
raises it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["SAVERS", "BatchWriter"]

T = TypeVar("T")
R = TypeVar("R")

SAVERS = 8
"""Threads saving one group's captions: a caption save is two fsyncs (file and folder) that wait on the disk,
and overlapping them is what makes a fast model's captions keep up (the measurement is in bench/RESULTS.md)."""
_STOP = object()


class BatchWriter(Generic[T]):
    """Feeds `handle(items, saver_pool)` with groups of the items `put` in batches, on one thread."""

    def __init__(self, handle: Callable[[list[T], ThreadPoolExecutor], None], *, max_batches: int,
                 group_images: int = 64) -> None:
        self._handle = handle
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, max_batches))
        self._group = max(1, group_images)
        self.error: BaseException | None = None
        self._savers = ThreadPoolExecutor(SAVERS, thread_name_prefix="lora-studio-save")
        self._thread = threading.Thread(target=self._loop, name="lora-studio-write", daemon=True)
        self._thread.start()

    def put(self, batch: Iterable[T]) -> None:
        """Queue one batch; blocks while the queue is full (the disk is behind)."""
        self._queue.put(list(batch))

    def close(self) -> None:
        """Write everything queued, then stop the thread (the error, if any, stays in `error`)."""
        self._queue.put(_STOP)
        self._thread.join()
        self._savers.shutdown(wait=True)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            group: list[T] = []
            batch = self._queue.get()
            while batch is not _STOP:
                group.extend(batch)  # type: ignore[arg-type]
                if len(group) >= self._group:
                    break
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = batch is _STOP
            if group and self.error is None:
                try:
                    self._handle(group, self._savers)
                except BaseException as error:  # kept for the run to raise; later batches are dropped
                    self.error = error
