"""Helpers of TrainData.prepare at scale: VAE batches of one bucket, each rank's share of the work, progress.

The latent cache's work is cut into VAE batches from the whole list of latents a run needs, and only a batch's
missing members are encoded, so a batch, and with it its posterior sample, does not depend on a resumed kill
(shards hold whole batches) or on how many ranks share the work. Ranks take contiguous runs of the batches to
compute, as sd-scripts splits its caching by process index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from .errors import TrainingError
from .progress import PrepMeter

if TYPE_CHECKING:
    from ..jobs import JobControl

T = TypeVar("T")
Job = TypeVar("Job", bound=Hashable)
Key = TypeVar("Key", bound=Hashable)

REPORT_EVERY_S = 0.25
"""The least time between two progress reports of one phase (the first and the last are always sent)."""


def bucket_batches(jobs: Sequence[Job], bucket_of: Callable[[Job], tuple[int, int]], size: int) -> list[list[Job]]:
    """`jobs` grouped by bucket (buckets sorted, jobs in their order) and cut into batches of at most `size`."""
    by_bucket: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        by_bucket.setdefault(bucket_of(job), []).append(job)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        batches.extend(members[start:start + size] for start in range(0, len(members), size))
    return batches


def rank_share(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s contiguous share of `items`; the shares of all ranks are disjoint and cover `items`."""
    return list(items[len(items) * rank // world_size:len(items) * (rank + 1) // world_size])


class PrepReporter:
    """Reports one phase's progress and ETA to a JobControl (checking for a stop at every call), at most every
    REPORT_EVERY_S; callable as `progress(done, total)` (the scan) or advanced with `add(count)` (the caches)."""

    def __init__(self, control: JobControl | None, phase: str, total: int = 0) -> None:
        self.control = control
        self.meter = PrepMeter(phase, total)
        self.done = 0
        self._sent = -REPORT_EVERY_S

    def __call__(self, done: int, total: int) -> None:
        self.meter.total = total
        self.done = done
        self._report()

    def add(self, count: int) -> None:
        self.done += count
        self._report()

    def start(self) -> None:
        self._report(force=True)

    def _report(self, *, force: bool = False) -> None:
        if self.control is None:
            return
        self.control.check()
        now = time.monotonic()
        if force or self.done >= self.meter.total or now - self._sent >= REPORT_EVERY_S:
            self._sent = now
            progress = self.meter.update(self.done, now=now)
            self.control.progress(done=self.done, total=self.meter.total, message=progress.message,
                                  **progress.as_extra())


class FillableCache(Protocol[Key]):
    """What fill_cache needs of a cache (LatentCache, TextCache)."""

    @property
    def on_disk(self) -> bool: ...

    @property
    def full(self) -> bool: ...

    def refresh(self) -> None: ...

    def has(self, key: Key) -> bool: ...

    def get(self, key: Key) -> object | None: ...

    def put(self, key: Key, value: object) -> None: ...

    def flush(self) -> None: ...


def verify_cached(cache: FillableCache[Key], keys: Sequence[Key], report: PrepReporter) -> None:
    """Read every cached entry of `keys` once (a damaged one is dropped, to be computed again)."""
    present = [key for key in keys if cache.has(key)] if cache.on_disk else []
    if not present:
        return
    report(0, len(present))
    for done, key in enumerate(present, 1):
        cache.get(key)
        if done % 256 == 0 or done == len(present):
            report(done, len(present))


def fill_cache(cache: FillableCache[Key], batches: Sequence[Sequence[Key]],
               encode: Callable[[list[Key]], Sequence[object]], *, rank: int, world_size: int,
               sync: Callable[[], None], report: PrepReporter) -> int:
    """Compute the entries of `batches` that `cache` lacks, `encode(keys)` giving their values; returns how many.

    Only a batch's missing keys are encoded. With a disk cache and several ranks, each rank computes its
    contiguous share of those batches into its own shards; `sync` is called before (every rank has indexed the
    folder before any writes to it) and after (all shards are written), then every rank indexes them all.
    TrainingError if an entry is still missing at the end (another rank failed).
    """
    sync()
    todo = [missing for batch in batches if (missing := [key for key in batch if not cache.has(key)])]
    shared = cache.on_disk and world_size > 1
    mine = rank_share(todo, rank, world_size) if shared else todo
    report.meter.total = sum(len(batch) for batch in mine)
    report.start()
    try:
        for batch in mine:
            for key, value in zip(batch, encode(batch), strict=True):
                cache.put(key, value)
            if cache.full:
                cache.flush()
            report.add(len(batch))
    finally:
        cache.flush()  # whole batches only: a stop or a crash keeps what was computed
    sync()
    if shared:
        cache.refresh()
    lost = sum(not cache.has(key) for batch in batches for key in batch)
    if lost:
        raise TrainingError(f"{lost} cached entries ({report.meter.phase}) are missing after caching (did another "
                            "process fail?); run again to compute them")
    return report.meter.total
