"""The queue across restarts: a queued run killed (SIGKILL) and continued by a fresh process that reads the queue
file ends with the weights, step and epoch counts and validation curve of a run never killed; killed twice, or
killed while it writes a checkpoint, or with its newest checkpoint torn afterwards, too. A stopped run stays first
and continues; one that cannot continue keeps its checkpoints. (The checkpoint and queue-file checks that need no
training are in test_train_queue_files.py.)

Each "process" is a fork of the test process (the tiny model and the imports inherited, so it starts in
milliseconds); the only thing that passes from one to the next is what is on disk, as after a WebUI restart.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_queue_files import tiny_state
from train_run_helpers import make_pattern_dataset, tiny_config

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.files import load_lora_file, read_header
from lib_lora.train.checkpoints import list_checkpoints
from lib_lora.train.loop import TrainRun
from lib_lora.train.queue import TrainQueue
from lib_lora.train.queue_store import read_queue_file
from lib_lora.train.resume_state import NETWORK_FILE, TrainPosition, save_state

pytest.importorskip("diffusers")

EVERY = 4  # checkpoint every 4 steps: with 4 images in batches of 1, at each epoch's end
# shuffled captions, flips, noise offset, network dropout (the global generator), warm-up and cosine schedule, and
# validation: every random state, the scheduler and the validation curve must continue exactly
SETTINGS = dict(max_train_steps=12, train_batch_size=1, network_train_unet_only=True, shuffle_caption=True,
                flip_aug=True, noise_offset=0.05, network_dropout=0.1, lr_scheduler="cosine", lr_warmup_steps=3,
                validation_split=0.2, validate_every_n_steps=3, seed=5)


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("data"), count=5)  # 4 train, 1 held out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, host):
    """The run never interrupted: its file and result."""
    out = tmp_path_factory.mktemp("reference")
    result = TrainRun(tiny_config(dataset, out, output_name="run", **SETTINGS), host).run()
    return result


def _child(queue_file: Path, out: Path, host: Any, kill_at_step: int | None, kill_in_checkpoint: int | None,
           report: Path) -> None:
    """A fresh "process": read the queue file, continue it; SIGKILL itself at a step or inside a checkpoint."""
    if kill_in_checkpoint is not None:
        real_save = torch.save

        def dying_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
            real_save(obj, path, *args, **kwargs)
            if f"step{kill_in_checkpoint:08d}" in str(path):  # one file of the checkpoint written, not the rest
                os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save

    def before_run(run: TrainRun) -> None:
        def on_step(progress: Any) -> None:
            if progress.step == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

        run.on_step = on_step

    queue = TrainQueue.open(queue_file)
    outcomes = queue.run_all(lambda: host, output_dir=out, before_run=before_run, checkpoint_every_n_steps=EVERY)
    result = outcomes[0].result
    report.write_text(json.dumps({"status": outcomes[0].status, "error": outcomes[0].error,
                                  "steps": result.steps, "epochs": result.epochs, "losses": result.loss_history,
                                  "validation": result.validation_history, "notes": result.notes}))


def _restart(tmp_path: Path, host: Any, *, kill_at_step: int | None = None,
             kill_in_checkpoint: int | None = None) -> int:
    """Run the queue in a fresh process to its end or its death; its exit code."""
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(tmp_path / "queue.toml", tmp_path / "out", host, kill_at_step, kill_in_checkpoint,
                             tmp_path / "report.json"))
    process.start()
    process.join(timeout=120)
    return process.exitcode


@pytest.mark.parametrize("kills, tear, resumed_from", [
    ([{"kill_at_step": 6}], False, 4),  # checkpoint 4 (an epoch's end) left
    ([{"kill_at_step": 6}, {"kill_at_step": 11}], False, 8),  # killed twice: from 4, then from 8
    ([{"kill_in_checkpoint": 8}], False, 4),  # killed while writing checkpoint 8: a temp folder left, 4 used
    ([{"kill_at_step": 10}], True, 4),  # checkpoints 4 and 8 left, 8 torn afterwards: 4 used
])
def test_a_killed_run_continued_after_a_restart_ends_as_the_run_never_killed(tmp_path, dataset, host, reference,
                                                                              kills, tear, resumed_from):
    queue = TrainQueue.open(tmp_path / "queue.toml")
    queue.add(tiny_config(dataset, tmp_path / "out", output_name="run", **SETTINGS))
    folder = queue.checkpoint_folder("run")
    for kill in kills:
        assert _restart(tmp_path, host, **kill) == -signal.SIGKILL
        [entry] = read_queue_file(tmp_path / "queue.toml")
        assert (entry.name, entry.status) == ("run", "started")  # interrupted: waits to be continued
    assert list_checkpoints(folder)
    if tear:
        newest = list_checkpoints(folder)[-1][1]
        with open(newest / NETWORK_FILE, "r+b") as f:
            f.truncate(100)
    assert _restart(tmp_path, host) == 0

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "done", report["error"]
    assert f"continued from its checkpoint step{resumed_from:08d}-state" in report["notes"]
    assert any("step 8 is not whole" in note for note in report["notes"]) is tear
    assert (report["steps"], report["epochs"]) == (12, 3)
    assert report["losses"] == pytest.approx(reference.loss_history, abs=1e-6)
    assert [step for step, _ in report["validation"]] == [step for step, _ in reference.validation_history]
    assert [value for _, value in report["validation"]] == \
        pytest.approx([value for _, value in reference.validation_history], abs=1e-6)
    output = tmp_path / "out" / "run.safetensors"
    expected, got = load_lora_file(reference.output).tensors, load_lora_file(output).tensors
    assert expected.keys() == got.keys()
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) <= 1e-6
    metadata, reference_metadata = read_header(output).metadata, read_header(reference.output).metadata
    for key in ("ss_steps", "ss_epoch", "ss_max_train_steps", "ss_num_epochs", "ss_validation_loss",
                "ss_validation_step", "ss_seed", "ss_lr_scheduler"):
        assert metadata.get(key) == reference_metadata.get(key), key
    assert (metadata["ss_steps"], metadata["ss_epoch"]) == ("12", "3")
    assert len(TrainQueue.open(tmp_path / "queue.toml")) == 0 and not folder.exists()  # done: nothing left over


def test_a_stopped_run_stays_first_and_continues_from_where_it_stopped(tmp_path, dataset, host, reference):
    queue = TrainQueue.open(tmp_path / "queue.toml")
    for name in ("run", "next"):
        queue.add(tiny_config(dataset, tmp_path / "out", output_name=name, **SETTINGS))

    def stop_at_7(run: TrainRun) -> None:
        run.on_step = lambda progress: run.request_stop() if progress.step == 7 else None

    outcomes = queue.run_all(lambda: host, output_dir=tmp_path / "out", before_run=stop_at_7,
                             checkpoint_every_n_steps=EVERY)
    assert [(o.name, o.status) for o in outcomes] == [("run", "stopped"), ("next", "skipped")]
    assert outcomes[0].result.output.name == "run-step00000007.safetensors"  # what it learned is saved, as always
    assert [(r.name, r.status) for r in TrainQueue.open(tmp_path / "queue.toml").runs] == [("run", "stopped"),
                                                                                           ("next", "queued")]
    assert [step for step, _ in list_checkpoints(queue.checkpoint_folder("run"))] == [4, 7]  # every 4, and the stop

    queue.remove("next")
    [outcome] = TrainQueue.open(tmp_path / "queue.toml").run_all(lambda: host, output_dir=tmp_path / "out",
                                                                 checkpoint_every_n_steps=EVERY)
    assert outcome.status == "done" and "continued from its checkpoint step00000007-state" in outcome.result.notes
    assert outcome.result.loss_history == pytest.approx(reference.loss_history, abs=1e-6)
    expected, got = load_lora_file(reference.output).tensors, load_lora_file(outcome.result.output).tensors
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) <= 1e-6


def test_a_run_that_cannot_continue_keeps_its_checkpoints_and_the_next_run_trains(tmp_path, dataset, host):
    queue = TrainQueue.open(tmp_path / "queue.toml")
    queue.add(tiny_config(dataset, tmp_path / "out", output_name="other-model", **SETTINGS))
    queue.add(tiny_config(dataset, tmp_path / "out", output_name="next", max_train_steps=1))
    queue._set_status("other-model", "started")  # as a kill left it, with a checkpoint this network cannot take
    position = TrainPosition(step=4, epoch=1, batch_in_epoch=0, seed=5, session_id=2, started_at=3.0)
    save_state(queue.checkpoint_folder("other-model") / "step00000004-state", position=position, **tiny_state())

    outcomes = queue.run_all(lambda: host, output_dir=tmp_path / "out", checkpoint_every_n_steps=EVERY)
    assert [(o.name, o.status) for o in outcomes] == [("other-model", "failed"), ("next", "done")]
    assert "cannot load" in outcomes[0].error and "stays in the queue" in outcomes[0].error
    assert [(r.name, r.status) for r in TrainQueue.open(tmp_path / "queue.toml").runs] == [("other-model", "started")]
    assert [step for step, _ in list_checkpoints(queue.checkpoint_folder("other-model"))] == [4]
