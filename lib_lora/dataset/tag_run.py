"""Tagging a folder: decode, run the model per the tagger's plan, write each caption as soon as it is tagged.

`tag_folder` keeps `plan.model_runs` batches running at once (on the CPU one single-threaded run per core,
each decoding its own images; on a GPU one run fed by decoding threads), hands every tagged image to one
writer thread that saves its caption (atomic, old caption backed up) and reports progress, and stops
between batches on cancel with the captions of every finished batch on disk.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from ..jobs import JobControl
from .captions import save_caption
from .errors import DatasetError
from .folder import Dataset, DatasetItem, leave_out_links, scan_dataset
from .images import open_image
from .preprocess import prepare_image
from .tagger import RunPlan, Tagger, TaggerOptions, merge_caption, tags_from_scores

__all__ = ["ImageResult", "TagReport", "tag_folder"]


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image: tagged (caption written), skipped, unreadable, or not written (failed)."""

    image: Path
    caption_path: Path
    status: Literal["tagged", "skipped", "unreadable", "failed"]
    tags: tuple[str, ...] = ()
    caption: str | None = None
    error: str | None = None


@dataclass
class TagReport:
    """The results of a folder run, in folder order, plus the provider that ran and its warnings."""

    provider: str
    warnings: tuple[str, ...]
    plan: RunPlan
    results: list[ImageResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, status: str) -> list[ImageResult]:
        return [r for r in self.results if r.status == status]

    def summary(self) -> str:
        """One line of counts, time, provider and batch (the warnings are shown apart)."""
        counts = {s: len(self.of(s)) for s in ("tagged", "skipped", "unreadable", "failed")}
        return (f"tagged {counts['tagged']}, skipped {counts['skipped']} (existing caption), unreadable "
                f"{counts['unreadable']}, not written {counts['failed']} in {self.seconds:.1f}s on "
                f"{self.provider.removesuffix('ExecutionProvider')} ({self.plan.describe()})")


def _existing_text(item: DatasetItem) -> str | None:
    caption = item.caption
    text = getattr(caption, "text", caption)
    return text if isinstance(text, str) and text.strip() else None


def _decode(path: Path, size: int) -> np.ndarray:
    return prepare_image(open_image(path), size)


Pending = Callable[[], np.ndarray]
"""One image's model input, decoded when called (or waited for, when a decoding thread has it)."""


def _batches(items: Sequence[DatasetItem], size: int, batch_size: int, decoders: ThreadPoolExecutor | None
             ) -> Iterator[list[tuple[DatasetItem, Pending]]]:
    """Batches of (item, pending input). With decoding threads the next two batches decode ahead; without,
    each image is decoded by whoever runs its batch."""
    if decoders is None:
        for start in range(0, len(items), batch_size):
            yield [(item, partial(_decode, Path(item.image), size)) for item in items[start:start + batch_size]]
        return
    pending: deque[tuple[DatasetItem, Pending]] = deque()
    queue = iter(items)
    while True:
        while len(pending) < 2 * batch_size:
            item = next(queue, None)
            if item is None:
                break
            pending.append((item, decoders.submit(_decode, Path(item.image), size).result))
        if not pending:
            return
        yield [pending.popleft() for _ in range(min(batch_size, len(pending)))]


def tag_folder(
    dataset_or_root: Dataset | Path | str,
    tagger: Tagger,
    options: TaggerOptions,
    control: JobControl | None = None,
    *,
    on_image: Callable[[ImageResult], None] | None = None,
    backup_dir: Path | None = None,
) -> TagReport:
    """Tag every image of a dataset (or folder) and write its caption as soon as it is tagged.

    A folder is scanned without the items whose image or caption links outside it (listed in `problems`).
    Images whose caption exists are skipped without decoding under `existing="skip"`; unreadable images and
    captions that cannot be written (a link, a read-only file, changed meanwhile, ...) are reported, not fatal.
    Cancel (JobCancelled) is checked before each batch starts; the batches already running finish and their
    captions stay written.
    """
    start = time.perf_counter()
    if isinstance(dataset_or_root, Dataset):
        dataset = dataset_or_root
    else:
        dataset = leave_out_links(
            scan_dataset(Path(dataset_or_root), caption_ext=options.caption_ext, recursive=options.recursive)
        )
    plan = tagger.plan(options.batch_size)
    report = TagReport(tagger.provider_in_use, tagger.warnings, plan, problems=[str(p) for p in dataset.problems])

    def record(result: ImageResult) -> None:
        report.results.append(result)
        if on_image is not None:
            on_image(result)

    todo: list[DatasetItem] = []
    for item in dataset.items:
        if options.existing == "skip" and _existing_text(item) is not None:
            record(ImageResult(Path(item.image), Path(item.caption_path), "skipped"))
        else:
            todo.append(item)
    total, done = len(todo), 0
    if control is not None:
        control.progress(0, total, f"tagging {total} images with {tagger.files.name}",
                         provider=tagger.provider_in_use, warnings=list(tagger.warnings))

    def finish(item: DatasetItem, scores: np.ndarray | None, error: str | None) -> None:
        """On the writer thread, in the order images finish: tags -> caption -> disk, then report it."""
        nonlocal done
        if scores is None:
            result = ImageResult(Path(item.image), Path(item.caption_path), "unreadable", error=error)
        else:
            result = _write(item, tags_from_scores(scores, tagger.labels, options), options, dataset.root, backup_dir)
        record(result)
        done += 1
        if control is not None:
            control.progress(done, total, f"{result.status} {result.image.name}")

    # Captions are saved (fsync) on their own thread so the model never waits for the disk.
    writer = ThreadPoolExecutor(1, thread_name_prefix="lora-studio-write")
    writes: list[Future[None]] = []  # appended to from the model runs (list.append is atomic)

    def run(batch: list[tuple[DatasetItem, Pending]]) -> None:
        decoded: list[tuple[DatasetItem, np.ndarray]] = []
        for item, pending in batch:
            try:
                decoded.append((item, pending()))
            except DatasetError as error:
                writes.append(writer.submit(finish, item, None, str(error)))
        if decoded:
            scores = tagger.predict(np.stack([array for _, array in decoded]))
            writes.extend(writer.submit(finish, item, row, None) for (item, _), row in zip(decoded, scores))

    decoders = ThreadPoolExecutor(plan.decode_workers, "lora-studio-decode") if plan.decode_workers else None
    runners = ThreadPoolExecutor(plan.model_runs, thread_name_prefix="lora-studio-tag")
    running: deque[Future[None]] = deque()
    try:
        for batch in _batches(todo, tagger.input_size, plan.batch_size, decoders):
            while len(running) >= plan.model_runs:
                running.popleft().result()
            if control is not None:
                control.check()
            running.append(runners.submit(run, batch))
        while running:
            running.popleft().result()
    finally:
        runners.shutdown(wait=True)  # a batch already running finishes, so its captions are written
        if decoders is not None:
            decoders.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)  # every tagged image's caption is on disk before this returns or raises
        order = {Path(item.image): i for i, item in enumerate(dataset.items)}
        report.results.sort(key=lambda result: order[result.image])  # skipped ones were recorded first
        report.seconds = time.perf_counter() - start
    for write in writes:
        write.result()  # a bug on the writer thread is raised here, not lost
    return report


def _write(item: DatasetItem, tags: list[str], options: TaggerOptions, root: Path,
           backup_dir: Path | None) -> ImageResult:
    """Save one caption (atomic, the old one backed up under the dataset root); a write error becomes "failed"."""
    existing = _existing_text(item)
    caption = merge_caption(tags, existing, options)
    image, caption_path = Path(item.image), Path(item.caption_path)
    try:
        save_caption(caption_path, caption, expected=item.caption, backup_dir=backup_dir, root=root)
    except DatasetError as error:
        return ImageResult(image, caption_path, "failed", tuple(tags), caption, str(error))
    return ImageResult(image, caption_path, "tagged", tuple(tags), caption)
