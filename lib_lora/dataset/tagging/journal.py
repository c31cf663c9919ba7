"""The journal that makes a tagging run resumable: what each image was tagged with, kept until the run finishes.

A run is keyed by its settings (`run_fingerprint`: the model's and tag list's bytes, every option that changes a
caption), so a changed setting or model is a new run. Its folder `<dataset>/.lora_studio_tagging/<fingerprint>/`
holds one append-only journal per process (`rank-<n>.jsonl`). Before a batch's captions are written, one line
per image records the image (path, size, mtime), the caption decided on and the digest of the caption file it
replaces (written in one go and fsynced, so a crash never loses a tagged image); after the write a second line
records the outcome. On resume, an image counts as done when its caption file holds the journal's caption, and
its caption is written from the journal (no model run) when the file is still as it was before; an image or
caption changed since is tagged again.

Why lines appended rather than one state file replaced atomically: at 50,000 images, rewriting the whole state
per batch would cost O(n²); an appended line is whole or, after a crash mid-write, a torn last line that the
reader drops (it is not valid JSON). A finished run deletes its folder (tagging.run), so no later run reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ...atomic import write_atomically
from ..errors import DatasetError
from .models import TaggerFiles
from .selection import TaggerOptions

__all__ = [
    "JOURNAL_DIR_NAME",
    "Intent",
    "JournalEntry",
    "Outcome",
    "TagJournal",
    "TagJournalError",
    "image_stamp",
    "run_fingerprint",
]

JOURNAL_DIR_NAME = ".lora_studio_tagging"
"""The hidden folder in a dataset root holding the journals of unfinished tagging runs (the scan skips it)."""
JOURNAL_FORMAT = 1
_NOT_CAPTION_OPTIONS = ("batch_size",)
"""TaggerOptions fields that never change a caption, so a resumed run may change them."""

Stamp = tuple[int, int]
"""(size, mtime_ns) of an image file: when either changed, the image is tagged again."""


class TagJournalError(DatasetError):
    """The journal folder of a tagging run cannot be created or written (read-only dataset, full disk, ...)."""


def image_stamp(path: Path) -> Stamp | None:
    """(size, mtime_ns) of the image at `path`, None when it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so a kept model is hashed once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_fingerprint(files: TaggerFiles, options: TaggerOptions) -> str:
    """The run's key: the model and tag list by content, and every option that changes which caption is written."""
    parts: dict[str, Any] = {"format": JOURNAL_FORMAT}
    for name, path in (("model", files.model_path), ("tags", files.tags_path)):
        try:
            status = os.stat(path)
            parts[name] = _file_digest(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)
        except OSError as error:
            raise TagJournalError(f"cannot read the tagger file: {error.strerror or error}", path=path) from error
    parts["options"] = {key: value for key, value in dataclasses.asdict(options).items()
                        if key not in _NOT_CAPTION_OPTIONS}
    text = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Intent:
    """Written before the caption: image `key` with `stamp` gets `caption`, replacing a file of digest `before`
    (None: no caption file)."""

    key: str
    stamp: Stamp
    caption: str
    before: str | None


@dataclass(frozen=True)
class Outcome:
    """Written after: the caption was written ("tagged"), not written ("failed"), or the image is unreadable."""

    key: str
    stamp: Stamp
    status: Literal["tagged", "failed", "unreadable"]
    error: str | None = None


@dataclass(frozen=True)
class JournalEntry:
    """What the journal knows of one image: the latest intent (caption None for an unreadable image) and outcome."""

    key: str
    stamp: Stamp
    caption: str | None
    before: str | None
    outcome: str | None
    error: str | None


def _parse_lines(lines: list[bytes]) -> list[Any]:
    """The JSON values of `lines`, torn ones left out; all at once when none is torn (the usual case, 2x faster)."""
    try:
        return json.loads(b"[" + b",".join(line for line in lines if line.strip()) + b"]")
    except ValueError:
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-write
        return parsed


class TagJournal:
    """The journal folder of one run, appended to by this process (its `rank`), read across all processes."""

    def __init__(self, folder: Path, rank: int = 0, *, describe: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.rank = rank
        self.path = self.folder / f"rank-{rank}.jsonl"
        self._describe = describe
        self._fd: int | None = None

    @classmethod
    def open(cls, root: Path, fingerprint: str, rank: int = 0, *, describe: dict[str, Any] | None = None
             ) -> TagJournal:
        """The journal of run `fingerprint` in the dataset `root`; its folder is made when first written to (a
        run with nothing to tag writes nothing), with `describe` in settings.json for a person looking."""
        return cls(Path(root) / JOURNAL_DIR_NAME / fingerprint, rank, describe=describe)

    def _make_folder(self) -> None:
        """The run's folder, made when missing; TagJournalError if it cannot be."""
        if self.folder.is_dir():
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._describe is not None:
                write_atomically(self.folder / "settings.json",
                                 [json.dumps(self._describe, indent=1, default=list).encode()])
        except OSError as error:
            raise TagJournalError(f"cannot keep the tagging journal: {error.strerror or error}",
                                  path=self.folder) from error

    def entries(self) -> dict[str, JournalEntry]:
        """Each journaled image's latest entry, over every process's journal (a torn last line is dropped)."""
        records = sorted(self._records(), key=lambda record: record["t"])
        entries: dict[str, JournalEntry] = {}
        for record in records:
            key, stamp = record["k"], (record["s"], record["m"])
            if "c" in record:
                entries[key] = JournalEntry(key, stamp, record["c"], record.get("b"), None, None)
            elif record.get("r") == "unreadable":
                entries[key] = JournalEntry(key, stamp, None, None, "unreadable", record.get("e"))
            elif key in entries and entries[key].stamp == stamp:
                entry = entries[key]
                entries[key] = JournalEntry(key, stamp, entry.caption, entry.before, record.get("r"), record.get("e"))
        return entries

    def _records(self) -> Iterator[dict[str, Any]]:
        try:
            parts = sorted(self.folder.glob("rank-*.jsonl"))
        except OSError:
            return
        for part in parts:
            try:
                data = part.read_bytes()
            except OSError:
                continue
            for record in _parse_lines(data.splitlines()):
                if (isinstance(record, dict) and isinstance(record.get("t"), int) and isinstance(record.get("k"), str)
                        and isinstance(record.get("s"), int) and isinstance(record.get("m"), int)):
                    yield record

    def intend(self, intents: Sequence[Intent]) -> None:
        """Record captions about to be written, in one write, on disk (fsynced) before this returns."""
        self._append([{"k": i.key, "s": i.stamp[0], "m": i.stamp[1], "c": i.caption, "b": i.before}
                      for i in intents], sync=True)

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Record what happened (not fsynced: a lost outcome line is recovered from the caption file itself)."""
        self._append([{"k": o.key, "s": o.stamp[0], "m": o.stamp[1], "r": o.status,
                       **({"e": o.error} if o.error else {})} for o in outcomes], sync=False)

    def _append(self, records: list[dict[str, Any]], *, sync: bool) -> None:
        if not records:
            return
        self._make_folder()
        now = time.time_ns()
        data = "".join(json.dumps({"t": now, **record}, ensure_ascii=False) + "\n" for record in records).encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0),
                                   0o666)
                if os.fstat(self._fd).st_size and os.lseek(self._fd, -1, os.SEEK_END) >= 0 and os.read(
                        self._fd, 1) != b"\n":
                    data = b"\n" + data  # a line torn by a crash stays alone on its line, so it is the only one lost
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                (getattr(os, "fdatasync", None) or os.fsync)(self._fd)
        except OSError as error:
            raise TagJournalError(f"cannot write the tagging journal: {error.strerror or error}",
                                  path=self.path) from error

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def parts_size(self) -> int:
        """The bytes in every process's journal: it grows while any process is tagging."""
        total = 0
        for part in self.folder.glob("rank-*.jsonl"):
            with contextlib.suppress(OSError):
                total += part.stat().st_size
        return total

    def mark_done(self, launch: str, summary: dict[str, Any]) -> None:
        """Leave this process's done-marker for the launch `launch` (written atomically)."""
        self._make_folder()
        marker = self.folder / f"done-{self.rank}.json"
        try:
            write_atomically(marker, [json.dumps({"launch": launch, "rank": self.rank, **summary}).encode()])
        except OSError as error:
            raise TagJournalError(f"cannot write the done-marker: {error.strerror or error}", path=marker) from error

    def done_markers(self, launch: str) -> dict[int, dict[str, Any]]:
        """The done-markers of launch `launch` by rank (an earlier launch's are ignored)."""
        markers: dict[int, dict[str, Any]] = {}
        for path in self.folder.glob("done-*.json"):
            try:
                marker = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(marker, dict) and marker.get("launch") == launch and isinstance(marker.get("rank"), int):
                markers[marker["rank"]] = marker
        return markers

    def discard(self) -> None:
        """Delete the run's folder (and the journals' parent when no other run is left in it)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()
