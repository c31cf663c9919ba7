"""The tagging writer: groups what queued up, keeps the model at most a few batches ahead of a slow disk (memory
stays flat, Cancel acts soon), and keeps an error for the run to raise without leaving a model run waiting."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lib_lora.dataset.tagging import run as tag_run
from lib_lora.dataset.tagging.models import resolve_model
from lib_lora.dataset.tagging.run import tag_folder
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
from lib_lora.dataset.tagging.writer import BatchWriter
from lib_lora.tiny.images import generate_dataset
from lib_lora.tiny.tagger import write_tiny_wd14_tagger

pytestmark = pytest.mark.hostcompat


def test_groups_what_queued_up_in_order() -> None:
    entered, gate, groups = threading.Event(), threading.Event(), []

    def handle(group: list[int], savers: ThreadPoolExecutor) -> None:
        entered.set()
        gate.wait(5)
        groups.append(group)

    writer: BatchWriter[int] = BatchWriter(handle, max_batches=10, group_images=5)
    writer.put([0, 1])
    assert entered.wait(5)  # the writer is busy with the first batch while the next ones queue up
    for start in range(2, 12, 2):
        writer.put([start, start + 1])
    gate.set()
    writer.close()
    assert [n for group in groups for n in group] == list(range(12))
    assert groups[0] == [0, 1] and max(len(g) for g in groups) <= 6 and len(groups) < 6


def test_a_full_queue_holds_the_producer_back() -> None:
    gate = threading.Event()
    writer: BatchWriter[int] = BatchWriter(lambda group, savers: gate.wait(5), max_batches=2)
    writer.put([0])  # taken by the writer, which then waits
    time.sleep(0.1)
    writer.put([1])
    writer.put([2])
    blocked = threading.Thread(target=writer.put, args=([3],))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # the queue is full: the model run waits for the disk
    gate.set()
    blocked.join(5)
    writer.close()


def test_an_error_is_kept_and_later_batches_are_dropped_not_blocked() -> None:
    seen = []

    def handle(group: list[int], savers: ThreadPoolExecutor) -> None:
        seen.extend(group)
        raise OSError("disk full")

    writer: BatchWriter[int] = BatchWriter(handle, max_batches=1, group_images=1)
    for n in range(5):
        writer.put([n])  # never blocks for good: the failed writer drains the queue
    writer.close()
    assert isinstance(writer.error, OSError) and seen == [0]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Tagger:
    pytest.importorskip("onnxruntime")
    model = write_tiny_wd14_tagger(tmp_path_factory.mktemp("model"), input_size=64).directory
    return Tagger.load(resolve_model(str(model)), providers=["cpu"])


def test_the_model_stays_a_few_batches_ahead_of_a_slow_disk(tagger: Tagger, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    images = generate_dataset(tmp_path, count=40, seed=4).images
    real_save = tag_run.save_caption

    def slow_save(*args: object, **kwargs: object) -> object:
        time.sleep(0.01)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(tag_run, "save_caption", slow_save)
    counted, written, ahead = copy.copy(tagger), [], []

    def predict(batch: np.ndarray) -> np.ndarray:
        ahead.append(sum(len(b) for b in ahead_batches) - len(written))
        ahead_batches.append(batch)
        return tagger.predict(batch)

    ahead_batches: list[np.ndarray] = []
    counted.predict = predict  # type: ignore[method-assign]
    options = TaggerOptions(recursive=True, existing="overwrite", batch_size=1)
    report = tag_folder(tmp_path, counted, options, on_image=written.append)
    runs = counted.plan(1).model_runs
    assert report.counts()["tagged"] == len(images)
    assert max(ahead) <= 2 * (2 * runs + 2) + runs  # the queue, one group being saved, the runs: not 40
