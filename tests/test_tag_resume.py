"""Resuming a tagging run: a stopped or crashed (SIGKILL) run continues where it stopped, no image goes through the
model twice, the captions are byte for byte those of an uninterrupted run, and a finished run leaves no journal."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.cli.main import main
from lib_lora.dataset.tagging import run as tag_run
from lib_lora.dataset.tagging.journal import JOURNAL_DIR_NAME, Intent, Outcome, TagJournal, TagJournalError
from lib_lora.dataset.tagging.models import resolve_model
from lib_lora.dataset.tagging.run import tag_folder
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
from lib_lora.jobs import Job, JobCancelled
from lib_lora.tiny.images import generate_dataset
from lib_lora.tiny.tagger import write_tiny_wd14_tagger

pytestmark = pytest.mark.hostcompat

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
OVERWRITE = TaggerOptions(recursive=True, existing="overwrite", batch_size=2, trigger="tinychar")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("model")).directory


@pytest.fixture(scope="module")
def tagger(model: Path) -> Tagger:
    return Tagger.load(resolve_model(str(model)), providers=["cpu"])


class Counting:
    """The tagger with its model calls counted: how many images went through the model."""

    def __init__(self, tagger: Tagger, stop_after: int | None = None) -> None:
        self.tagger, self.images, self.job = copy.copy(tagger), 0, None
        original = tagger.predict

        def predict(batch: np.ndarray) -> np.ndarray:
            self.images += len(batch)
            scores = original(batch)
            if stop_after is not None and self.images >= stop_after and self.job is not None:
                self.job.cancel()  # the user presses Cancel
            return scores

        self.tagger.predict = predict  # type: ignore[method-assign]


def captioned(folder: Path, count: int = 12) -> list[Path]:
    """A generated dataset with captions (so `existing=overwrite` has something to replace); the image paths."""
    return list(generate_dataset(folder, count=count, seed=9).images)


def caption_bytes(folder: Path) -> dict[str, bytes]:
    """Every caption under `folder` (hidden folders left out), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.txt"))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def journal_keys(folder: Path) -> set[str]:
    """The images the journals of `folder` hold a caption for (each went through the model once)."""
    runs = list((folder / JOURNAL_DIR_NAME).iterdir())
    assert len(runs) == 1
    return {key for key, entry in TagJournal(runs[0]).entries().items() if entry.caption is not None}


@pytest.fixture
def reference(tagger: Tagger, tmp_path: Path) -> dict[str, bytes]:
    """The captions of one uninterrupted run."""
    captioned(tmp_path / "reference")
    tag_folder(tmp_path / "reference", tagger, OVERWRITE)
    return caption_bytes(tmp_path / "reference")


def test_a_cancelled_run_resumes_without_tagging_an_image_twice(tagger: Tagger, reference: dict[str, bytes],
                                                                  tmp_path: Path) -> None:
    images = captioned(tmp_path / "data")
    first = Counting(tagger, stop_after=4)
    job = Job("tag", lambda control: tag_folder(tmp_path / "data", first.tagger, OVERWRITE, control))
    first.job = job
    with pytest.raises(JobCancelled):
        job.run_here()
    done_first = journal_keys(tmp_path / "data")
    assert 4 <= len(done_first) < len(images) and first.images == len(done_first)

    second = Counting(tagger)
    report = tag_folder(tmp_path / "data", second.tagger, OVERWRITE)
    counts = report.counts()
    assert (counts["earlier"], counts["tagged"]) == (len(done_first), len(images) - len(done_first))
    assert second.images == counts["tagged"]  # only the images the first run did not do went through the model
    assert not done_first & {str(r.image.relative_to(tmp_path / "data")) for r in report.of("tagged")}
    assert f"{len(done_first)} done earlier (resumed)" in report.summary()
    assert caption_bytes(tmp_path / "data") == reference
    assert not (tmp_path / "data" / JOURNAL_DIR_NAME).exists()  # finished: nothing left for a later run


def test_a_crash_between_journal_and_caption_writes_it_from_the_journal(
        tagger: Tagger, reference: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = captioned(tmp_path / "data")
    real_save, calls = tag_run.save_caption, []

    def crash_on_the_second(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after journaling the batch, before this caption
        return real_save(*args, **kwargs)

    monkeypatch.setattr(tag_run, "save_caption", crash_on_the_second)
    first = Counting(tagger)
    with pytest.raises(KeyboardInterrupt):
        tag_folder(tmp_path / "data", first.tagger, OVERWRITE)
    monkeypatch.setattr(tag_run, "save_caption", real_save)
    journaled = journal_keys(tmp_path / "data")  # the batches after the crash went through the model, unjournaled
    assert 2 <= len(journaled) <= first.images

    second = Counting(tagger)
    report = tag_folder(tmp_path / "data", second.tagger, OVERWRITE)
    assert second.images == len(images) - len(journaled) == report.counts()["tagged"]
    assert caption_bytes(tmp_path / "data") == reference


def test_a_killed_process_resumes_and_no_image_is_tagged_twice(tagger: Tagger, model: Path,
                                                                reference: dict[str, bytes], tmp_path: Path) -> None:
    """SIGKILL half way through `python -m lib_lora tag` (slowed down), then the same run again."""
    images = captioned(tmp_path / "data")
    slow = ("import sys, time\nfrom lib_lora.dataset.tagging.tagger import Tagger\nrun = Tagger.predict\n"
            "Tagger.predict = lambda self, batch: (time.sleep(0.3 * len(batch)), run(self, batch))[1]\n"
            "from lib_lora.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-c", slow, "tag", str(tmp_path / "data"), "--model", str(model), "--recursive",
               "--existing", "overwrite", "--batch-size", "2", "--trigger", "tinychar"]
    process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journals = tmp_path / "data" / JOURNAL_DIR_NAME
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            parts = list(journals.glob("*/rank-*.jsonl"))
            if parts and sum(b'"c"' in line for line in parts[0].read_bytes().splitlines()) >= len(images) // 2:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    done_first = journal_keys(tmp_path / "data")
    assert len(images) // 2 <= len(done_first) < len(images)

    second = Counting(tagger)
    report = tag_folder(tmp_path / "data", second.tagger, OVERWRITE)
    tagged_now = {str(r.image.relative_to(tmp_path / "data")) for r in report.of("tagged")}
    assert second.images == len(tagged_now) == len(images) - len(done_first)
    assert not done_first & tagged_now and len(done_first | tagged_now) == len(images)
    assert caption_bytes(tmp_path / "data") == reference


def test_changed_settings_start_a_new_run_and_changed_files_are_tagged_again(tagger: Tagger,
                                                                             tmp_path: Path) -> None:
    images = captioned(tmp_path)
    first = Counting(tagger, stop_after=4)
    job = Job("tag", lambda control: tag_folder(tmp_path, first.tagger, OVERWRITE, control))
    first.job = job
    with pytest.raises(JobCancelled):
        job.run_here()
    other = Counting(tagger)
    tag_folder(tmp_path, other.tagger, TaggerOptions(recursive=True, existing="overwrite", general_threshold=0.5))
    assert other.images == len(images)  # another setting: another run, nothing counts as done
    assert len(list((tmp_path / JOURNAL_DIR_NAME).iterdir())) == 1  # the stopped run's journal, kept for it

    tag_folder(tmp_path, tagger, OVERWRITE)  # the stopped run, finished: its captions back
    job = Job("tag", lambda control: tag_folder(tmp_path, first.tagger, OVERWRITE, control))
    first.images, first.job = 0, job
    with pytest.raises(JobCancelled):
        job.run_here()
    done = sorted(journal_keys(tmp_path))
    changed_image, edited_caption = tmp_path / done[0], tmp_path / Path(done[1]).with_suffix(".txt")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(changed_image)  # replaced by another picture
    edited_caption.write_text("edited by hand", encoding="utf-8")
    again = Counting(tagger)
    report = tag_folder(tmp_path, again.tagger, OVERWRITE)
    retagged = {str(r.image.relative_to(tmp_path)) for r in report.of("tagged")}
    assert {done[0], str(Path(done[1]))} <= retagged and not set(done[2:]) & retagged
    assert "blue background" in changed_image.with_suffix(".txt").read_text(encoding="utf-8")
    assert not (tmp_path / JOURNAL_DIR_NAME).exists()


def test_a_finished_run_is_not_resumed_by_the_next(tagger: Tagger, tmp_path: Path) -> None:
    images = captioned(tmp_path)
    tag_folder(tmp_path, tagger, OVERWRITE)
    again = Counting(tagger)
    report = tag_folder(tmp_path, again.tagger, OVERWRITE)
    assert again.images == len(images) and report.counts()["earlier"] == 0


def test_a_torn_last_line_and_foreign_lines_are_ignored(tmp_path: Path) -> None:
    journal = TagJournal(tmp_path / "run", rank=0)
    journal.folder.mkdir()
    journal.intend([Intent("a.png", (10, 20), "x, y", None), Intent("b.png", (11, 21), "z", "d1")])
    journal.record([Outcome("a.png", (10, 20), "tagged"), Outcome("b.png", (99, 99), "tagged")])
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(b'{"t": 1, "k": "c.png", "s": 1, "m": 2, "c": "torn')  # killed mid-line
    (journal.folder / "rank-1.jsonl").write_text(json.dumps({"k": "d.png"}) + "\n[1, 2]\n", encoding="utf-8")
    entries = journal.entries()
    assert set(entries) == {"a.png", "b.png"}
    later = TagJournal(journal.folder, rank=0)  # the resumed run appends after the torn line
    later.intend([Intent("e.png", (1, 2), "w", None)])
    later.close()
    assert set(later.entries()) == {"a.png", "b.png", "e.png"}
    assert (entries["a.png"].caption, entries["a.png"].outcome) == ("x, y", "tagged")
    assert (entries["b.png"].before, entries["b.png"].outcome) == ("d1", None)  # that outcome was another file's
    later.discard()
    assert not tmp_path.joinpath("run").exists()


def test_an_unwritable_journal_is_one_clear_error_and_nothing_is_written(tagger: Tagger, tmp_path: Path) -> None:
    captioned(tmp_path, count=4)
    before = caption_bytes(tmp_path)
    (tmp_path / JOURNAL_DIR_NAME).write_text("not a folder", encoding="utf-8")
    with pytest.raises(TagJournalError, match="cannot keep the tagging journal"):
        tag_folder(tmp_path, tagger, OVERWRITE)
    assert caption_bytes(tmp_path) == before  # no caption is written that the journal does not know of


def test_a_run_with_nothing_to_tag_leaves_no_folder(tagger: Tagger, tmp_path: Path) -> None:
    captioned(tmp_path, count=2)
    report = tag_folder(tmp_path, tagger, TaggerOptions(recursive=True))
    assert report.counts()["skipped"] == 2 and not (tmp_path / JOURNAL_DIR_NAME).exists()


def test_the_command_line_says_it_resumes_and_shows_the_eta(tagger: Tagger, model: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    images = captioned(tmp_path)
    first = Counting(tagger, stop_after=4)
    job = Job("tag", lambda control: tag_folder(tmp_path, first.tagger, OVERWRITE, control))
    first.job = job
    with pytest.raises(JobCancelled):
        job.run_here()
    done = len(journal_keys(tmp_path))
    out = io.StringIO()
    assert main(["tag", str(tmp_path), "--model", str(model), "--recursive", "--existing", "overwrite",
                 "--batch-size", "2", "--trigger", "tinychar"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert f"tag: resuming the stopped run: {done} of {len(images)} images done earlier" in lines
    assert lines[-1].startswith(f"tag: tagged {len(images) - done}, {done} done earlier (resumed)")
    bar = capsys.readouterr().err
    assert re.search(rf"tagging: 100%.*{len(images) - done}/{len(images) - done} \[\d\d:\d\d<\d\d:\d\d", bar)  # ETA
