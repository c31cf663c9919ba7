"""Tagging a folder: decode, run the model per the tagger's plan, write each caption as soon as it is tagged.

`prepare_tagging` scans the folder, takes this process's share of it (shards.py) and sorts it out against the
run's journal (journal.py): done earlier, to write from the journal, skipped, or to tag. `TagRun.run` keeps
`plan.model_runs` batches running at once (on the CPU one single-threaded run per core, each decoding its own
images; on a GPU one run fed by decoding threads), hands every tagged batch to the writer (writer.py: a bounded
queue, so the model is never more than a few batches ahead of the disk) that journals it, saves its captions
(atomic, old caption backed up, several at once) and reports progress, and stops between batches on cancel with
the captions of every finished batch on disk. A run that finishes deletes its journal; under a launcher the main
process first waits (with a bound) for the others' done-markers and sums their counts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from ...jobs import JobControl
from ..captions import normalise_line_breaks, save_caption
from ..errors import DatasetError
from ..folder import Dataset, DatasetItem, leave_out_links, scan_dataset
from ..images import open_image
from ..preprocess import prepare_image
from .journal import Intent, JournalEntry, Outcome, Stamp, TagJournal, image_stamp, run_fingerprint
from .report import STATUSES, WORKED, ImageResult, TagReport
from .shards import Shard
from .tagger import Tagger, TaggerOptions, merge_caption, tags_from_scores
from .writer import BatchWriter

__all__ = ["STATUSES", "WORKED", "ImageResult", "TagReport", "TagRun", "prepare_tagging", "tag_folder"]

DEFAULT_PATIENCE = 300.0
"""Seconds the main process waits for the others once nothing moves in their journals."""


def _existing_text(item: DatasetItem) -> str | None:
    caption = item.caption
    text = getattr(caption, "text", caption)
    return text if isinstance(text, str) and text.strip() else None


def _decode(path: Path, size: int) -> np.ndarray:
    return prepare_image(open_image(path), size)


Pending = Callable[[], np.ndarray]
"""One image's model input, decoded when called (or waited for, when a decoding thread has it)."""
Finished = tuple[DatasetItem, "np.ndarray | None", "str | None"]
"""An image through the model: its scores, or None and why it could not be decoded."""
WRITER_GROUP = 64
"""The most images the writer journals and saves at once."""


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


def _path(path: Path | str) -> Path:
    """`path` as a Path, without building a new one when it is one (50,000 of them add up)."""
    return path if isinstance(path, Path) else Path(path)


def _keys(dataset: Dataset) -> dict[int, str]:
    """Each item's `dataset.key` by id(item), the common case (an image under the root) by slicing its text."""
    root = os.fspath(dataset.root).rstrip(os.sep) + os.sep
    keys: dict[int, str] = {}
    for item in dataset.items:
        text = os.fspath(item.image)
        if text.startswith(root) and os.altsep is None:
            keys[id(item)] = text[len(root):]
        else:
            keys[id(item)] = dataset.key(item)
    return keys


def _resumable(item: DatasetItem, entry: JournalEntry | None) -> Literal["earlier", "replay", "unreadable"] | None:
    """What the journal says of an image: its caption holds the journal's ("earlier"), the caption file is still as
    before the write ("replay": write it from the journal), it was unreadable, or None (unknown or changed since)."""
    if entry is None or image_stamp(item.image) != entry.stamp:
        return None
    if entry.caption is None:
        return "unreadable" if entry.outcome == "unreadable" else None
    current = item.caption
    if current is not None and current.text == normalise_line_breaks(entry.caption):
        return "earlier"
    return "replay" if (current.digest if current is not None else None) == entry.before else None


class TagRun:
    """One process's share of a folder, sorted out against the journal; `run` tags it (once)."""

    def __init__(self, dataset: Dataset, tagger: Tagger, options: TaggerOptions, shard: Shard,
                 journal: TagJournal | None) -> None:
        self.dataset, self.tagger, self.options, self.shard, self.journal = dataset, tagger, options, shard, journal
        self.plan = tagger.plan(options.batch_size, processes=shard.local_world_size)
        self.report = TagReport(tagger.provider_in_use, tagger.warnings, self.plan,
                                problems=[str(p) for p in dataset.problems], shard=shard)
        self.todo: list[DatasetItem] = []
        self.replay: list[tuple[DatasetItem, JournalEntry]] = []
        entries = journal.entries() if journal is not None else {}
        self.keys = _keys(dataset)
        share = shard.take(dataset.items, lambda item: self.keys[id(item)])
        self.share = len(share)  # how many images this process's share holds
        for item in share:
            entry = entries.get(self.keys[id(item)])
            found = _resumable(item, entry)
            image, caption_path = _path(item.image), _path(item.caption_path)
            if found == "earlier":
                self.report.results.append(ImageResult(image, caption_path, "earlier", caption=item.text))
            elif found == "unreadable":
                self.report.results.append(ImageResult(image, caption_path, "unreadable", error=entry.error))
            elif found == "replay":
                self.replay.append((item, entry))  # type: ignore[arg-type]
            elif self.options.existing == "skip" and _existing_text(item) is not None:
                self.report.results.append(ImageResult(image, caption_path, "skipped"))
            else:
                self.todo.append(item)

    @property
    def resumed(self) -> int:
        """Images this share had done by an earlier, stopped run of the same settings."""
        return len(self.replay) + sum(r.status in ("earlier", "unreadable") for r in self.report.results)

    def run(self, control: JobControl | None = None, *, on_image: Callable[[ImageResult], None] | None = None,
            backup_dir: Path | None = None, patience: float = DEFAULT_PATIENCE) -> TagReport:
        """Tag `todo`, write `replay` from the journal; see tag_folder. Returns the report (also on self.report)."""
        start = time.perf_counter()
        report, journal = self.report, self.journal
        tag_pass = _TagPass(self, control, on_image, backup_dir)
        tag_pass.begin()
        writer = tag_pass.writer
        try:
            self._tag_batches(tag_pass.run_batch, control, writer)
        finally:
            writer.close()  # every tagged image's caption is on disk before this returns or raises
            if journal is not None:
                journal.close()
            order = {_path(item.image): i for i, item in enumerate(self.dataset.items)}
            report.results.sort(key=lambda result: order[result.image])  # skipped ones were recorded first
            report.seconds = time.perf_counter() - start
        if writer.error is not None:
            raise writer.error  # a bug on the writer thread is raised here, not lost
        if journal is not None:
            self._finish(journal, patience)
        report.seconds = time.perf_counter() - start
        return report

    def _tag_batches(self, run_batch: Callable[[list[tuple[DatasetItem, Pending]]], None],
                     control: JobControl | None, writer: BatchWriter[Finished]) -> None:
        """Keep `plan.model_runs` batches of `todo` running, checking cancel before each starts; the batches
        already running finish before this returns or raises."""
        plan = self.plan
        decoders = ThreadPoolExecutor(plan.decode_workers, "lora-studio-decode") if plan.decode_workers else None
        runners = ThreadPoolExecutor(plan.model_runs, thread_name_prefix="lora-studio-tag")
        running: deque[Future[None]] = deque()
        try:
            for batch in _batches(self.todo, self.tagger.input_size, plan.batch_size, decoders):
                while len(running) >= plan.model_runs:
                    running.popleft().result()
                if control is not None:
                    control.check()
                if writer.error is not None:  # a journal that cannot be written stops the run, not each batch
                    break
                running.append(runners.submit(run_batch, batch))
            while running:
                running.popleft().result()
        finally:
            runners.shutdown(wait=True)  # a batch already running finishes, so its captions are written
            if decoders is not None:
                decoders.shutdown(wait=True, cancel_futures=True)

    def _finish(self, journal: TagJournal, patience: float) -> None:
        """The share is done: alone, delete the journal; under a launcher, leave a done-marker, and the main
        process waits for every marker of this launch, sums their counts and then deletes it."""
        from .shards import wait_for_processes

        if not self.shard.active:
            journal.discard()
            return
        report = self.report
        journal.mark_done(self.shard.launch, {
            "counts": {s: len(report.of(s)) for s in STATUSES},
            "failures": [(r.status, str(r.image), r.error or r.status) for r in report.results
                         if r.status in ("unreadable", "failed")],
        })
        if not self.shard.is_main:
            return
        report.others, report.missing = wait_for_processes(journal, self.shard, patience)
        if not report.missing:
            journal.discard()


_Planned = tuple[DatasetItem, Stamp, "list[str] | None", "str | None", "str | None"]
"""An image of a finished batch before its caption is saved: its stamp, tags, caption and decoding error."""


class _TagPass:
    """One call of `TagRun.run`: reports each result as it comes, counts progress, and (on the writer thread)
    turns tagged batches into journalled, saved captions."""

    def __init__(self, tag_run: TagRun, control: JobControl | None, on_image: Callable[[ImageResult], None] | None,
                 backup_dir: Path | None) -> None:
        self.tag_run, self.control, self.on_image, self.backup_dir = tag_run, control, on_image, backup_dir
        self.total, self.done = len(tag_run.todo), 0
        plan = tag_run.plan
        # Captions are saved on the writer's threads so the model never waits for the disk, unless it is far behind.
        self.writer: BatchWriter[Finished] = BatchWriter(self.finish, max_batches=2 * plan.model_runs + 2,
                                                         group_images=max(WRITER_GROUP, plan.batch_size))

    def key(self, item: DatasetItem) -> str:
        """The item's key in the journal."""
        return self.tag_run.keys[id(item)]

    def record(self, result: ImageResult) -> None:
        """Add a result to the report and hand it to `on_image`."""
        self.tag_run.report.results.append(result)
        if self.on_image is not None:
            self.on_image(result)

    def begin(self) -> None:
        """Hand over the results already known, announce the run, and write the captions to replay."""
        tag_run, control, journal = self.tag_run, self.control, self.tag_run.journal
        for result in list(tag_run.report.results):
            if self.on_image is not None:
                self.on_image(result)
        if control is not None:
            resumed = f" ({tag_run.resumed} done earlier)" if tag_run.resumed else ""
            control.progress(0, self.total, f"tagging {self.total} images with {tag_run.tagger.files.name}{resumed}",
                             provider=tag_run.tagger.provider_in_use, warnings=list(tag_run.tagger.warnings))
        for item, entry in tag_run.replay:  # tagged before a crash, the caption not yet written: no model run
            result = _write(item, entry.caption or "", (), tag_run.dataset.root, self.backup_dir, "earlier")
            if journal is not None:
                journal.record([_outcome(self.key(item), entry.stamp, result)])
            self.record(result)

    def run_batch(self, batch: list[tuple[DatasetItem, Pending]]) -> None:
        """Decode and tag one batch and hand it to the writer; an image that does not decode is handed on as such."""
        finished: list[Finished] = []
        decoded: list[tuple[DatasetItem, np.ndarray]] = []
        for item, pending in batch:
            try:
                decoded.append((item, pending()))
            except DatasetError as error:
                finished.append((item, None, str(error)))
        if decoded:
            scores = self.tag_run.tagger.predict(np.stack([array for _, array in decoded]))
            finished.extend((item, row, None) for (item, _), row in zip(decoded, scores))
        self.writer.put(finished)

    def finish(self, group: list[Finished], savers: ThreadPoolExecutor) -> None:
        """On the writer thread, in the order batches finish: tags -> journal -> captions -> disk -> report."""
        tag_run, journal = self.tag_run, self.tag_run.journal
        planned: list[_Planned] = []
        for item, scores, error in group:
            stamp = image_stamp(item.image) or (-1, -1)
            tags = tags_from_scores(scores, tag_run.tagger.labels, tag_run.options) if scores is not None else None
            caption = merge_caption(tags, _existing_text(item), tag_run.options) if tags is not None else None
            planned.append((item, stamp, tags, caption, error))
        if journal is not None:
            journal.intend([Intent(self.key(item), stamp, caption, item.caption.digest if item.caption else None)
                            for item, stamp, _, caption, _ in planned if caption is not None])
        results = list(savers.map(self._save, planned)) if len(planned) > 1 else [self._save(planned[0])]
        for result in results:
            self.record(result)
            self.done += 1
            if self.control is not None:
                self.control.progress(self.done, self.total, f"{result.status} {result.image.name}")
        if journal is not None:
            journal.record([_outcome(self.key(entry[0]), entry[1], result) for entry, result in zip(planned, results)])

    def _save(self, entry: _Planned) -> ImageResult:
        """Save one planned caption, or report the image unreadable."""
        item, _, tags, caption, error = entry
        if caption is None:
            return ImageResult(_path(item.image), _path(item.caption_path), "unreadable", error=error)
        return _write(item, caption, tuple(tags or ()), self.tag_run.dataset.root, self.backup_dir, "tagged")


def _outcome(key: str, stamp: tuple[int, int], result: ImageResult) -> Outcome:
    status: Literal["tagged", "failed", "unreadable"] = (
        "failed" if result.status == "failed" else "unreadable" if result.status == "unreadable" else "tagged")
    return Outcome(key, stamp, status, result.error)


def prepare_tagging(dataset_or_root: Dataset | Path | str, tagger: Tagger, options: TaggerOptions, *,
                    shard: Shard | None = None, resume: bool = True) -> TagRun:
    """Scan (a folder is scanned without the items whose image or caption links outside it, listed in
    `problems`), take this process's share and sort it out against the run's journal (when `resume`)."""
    if isinstance(dataset_or_root, Dataset):
        dataset = dataset_or_root
    else:
        dataset = leave_out_links(
            scan_dataset(Path(dataset_or_root), caption_ext=options.caption_ext, recursive=options.recursive)
        )
    shard = shard or Shard()
    journal = None
    if resume:
        describe = {"model": tagger.files.describe(), "options": dataclasses.asdict(options)}
        journal = TagJournal.open(dataset.root, run_fingerprint(tagger.files, options), shard.rank,
                                  describe=describe)
    return TagRun(dataset, tagger, options, shard, journal)


def tag_folder(
    dataset_or_root: Dataset | Path | str,
    tagger: Tagger,
    options: TaggerOptions,
    control: JobControl | None = None,
    *,
    on_image: Callable[[ImageResult], None] | None = None,
    backup_dir: Path | None = None,
    shard: Shard | None = None,
    resume: bool = True,
) -> TagReport:
    """Tag every image of a dataset (or folder), or this process's share of it, and write each caption as soon
    as its image is tagged.

    Images whose caption exists are skipped without decoding under `existing="skip"`; unreadable images and
    captions that cannot be written (a link, a read-only file, changed meanwhile, ...) are reported, not fatal.
    Cancel (JobCancelled) is checked before each batch starts; the batches already running finish and their
    captions stay written. With `resume` a stopped run of the same settings continues where it stopped: the
    images it did are not tagged again (see journal.py).
    """
    return prepare_tagging(dataset_or_root, tagger, options, shard=shard, resume=resume).run(
        control, on_image=on_image, backup_dir=backup_dir)


def _write(item: DatasetItem, caption: str, tags: tuple[str, ...], root: Path, backup_dir: Path | None,
           status: Literal["tagged", "earlier"]) -> ImageResult:
    """Save one caption (atomic, the old one backed up under the dataset root); a write error becomes "failed"."""
    image, caption_path = Path(item.image), Path(item.caption_path)
    try:
        save_caption(caption_path, caption, expected=item.caption, backup_dir=backup_dir, root=root)
    except DatasetError as error:
        return ImageResult(image, caption_path, "failed", tags, caption, str(error))
    return ImageResult(image, caption_path, status, tags, caption)
