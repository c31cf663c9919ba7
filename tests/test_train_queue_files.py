"""Checkpoints and the queue file without training (so under A1111's pins too): a torn checkpoint is passed over
for the one before, checkpoints are kept to their count, a crash while the queue file is written keeps the old
file, and the queue's length and file size are bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_run_helpers import make_pattern_dataset, tiny_config

from lib_lora.train.checkpoints import AutoCheckpoints, CheckpointPolicy, latest_checkpoint, list_checkpoints
from lib_lora.train.errors import ConfigError, TrainingError
from lib_lora.train.queue import QueueBusyError, TrainQueue
from lib_lora.train.queue_store import MAX_QUEUE_FILE_BYTES, MAX_QUEUED_RUNS
from lib_lora.train.resume_state import MANIFEST_FILE, NETWORK_FILE, TrainPosition, check_state, save_state

pytestmark = pytest.mark.hostcompat


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("data"), count=1)


# --- checkpoints and state folders -------------------------------------------------------------------------------


def tiny_state() -> dict[str, Any]:
    network = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(network.parameters())
    network(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"network": network, "optimizer": optimizer, "noise_generator": torch.Generator().manual_seed(0),
            "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)}


def _tear(folder: Path, damage: str) -> None:
    if damage == "truncated":
        with open(folder / NETWORK_FILE, "r+b") as f:
            f.truncate(f.seek(0, 2) - 1)
    elif damage == "flipped byte":
        data = bytearray((folder / "optimizer.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "optimizer.bin").write_bytes(bytes(data))
    elif damage == "missing file":
        (folder / "rng.bin").unlink()
    elif damage == "no manifest":
        (folder / MANIFEST_FILE).unlink()
    elif damage == "garbage manifest":
        (folder / MANIFEST_FILE).write_text("{", encoding="utf-8")


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "missing file", "no manifest", "garbage manifest"])
def test_a_torn_checkpoint_is_passed_over_for_the_one_before(tmp_path, damage):
    parts = tiny_state()
    for step in (4, 8):
        position = TrainPosition(step=step, epoch=0, batch_in_epoch=step, seed=1, session_id=2, started_at=3.0,
                                 validation_history=[(0, 1.5), (step, 1.25)])
        save_state(tmp_path / f"step{step:08d}-state", position=position, **parts)
    latest, notes = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "step00000008-state" and notes == []
    _tear(latest, damage)
    with pytest.raises(TrainingError):
        check_state(latest)
    latest, notes = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "step00000004-state"
    assert len(notes) == 1 and "step 8 is not whole" in notes[0]


def test_checkpoints_are_kept_to_their_count_and_a_later_write_drops_a_newer_stale_one(tmp_path):
    class Tracker:
        losses = [1.0]

    class Result:
        notes: list[str] = []

    parts = tiny_state()
    run = type("Run", (), {})()
    run.network, run.optimizer, run.scheduler = parts["network"], parts["optimizer"], parts["scheduler"]
    run.generator, run.scaler = parts["noise_generator"], None
    run.position = TrainPosition(step=0, epoch=0, batch_in_epoch=0, seed=1, session_id=2, started_at=3.0)
    auto = AutoCheckpoints(CheckpointPolicy(tmp_path, every_n_steps=2, keep=2), start_step=0)
    for step in range(1, 9):
        run.position.step = step
        auto.between_steps(run, Tracker(), Result(), step)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [6, 8]
    auto = AutoCheckpoints(CheckpointPolicy(tmp_path, every_n_steps=2, keep=2), start_step=3)  # resumed from 3
    run.position.step = 4
    auto.between_steps(run, Tracker(), Result(), 4)  # 6 and 8 belong to the abandoned try
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    with pytest.raises(ConfigError, match="checkpoint_keep"):
        CheckpointPolicy(tmp_path, keep=0)


# --- the queue file ---------------------------------------------------------------------------------------------


def test_a_crash_while_the_queue_file_is_written_keeps_the_old_file(tmp_path, dataset, monkeypatch):
    path = tmp_path / "queue.toml"
    queue = TrainQueue.open(path)
    queue.add(tiny_config(dataset, tmp_path, output_name="first"))
    before = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lib_lora.atomic.os.replace", crash)
    with pytest.raises(OSError, match="No space"):
        queue.add(tiny_config(dataset, tmp_path, output_name="second"))
    with pytest.raises(OSError, match="No space"):
        queue.remove("first")
    monkeypatch.undo()
    assert path.read_bytes() == before and [run.name for run in queue.runs] == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert [run.name for run in TrainQueue.open(path).runs] == ["first"]


def test_the_queue_is_bounded_and_reorders_and_removes(tmp_path, dataset):
    path = tmp_path / "queue.toml"
    queue = TrainQueue.open(path)
    for name in ("a", "b", "c"):
        queue.add(tiny_config(dataset, tmp_path, output_name=name))
    assert queue.move("c", -1) == 1 and queue.move("a", -5) == 0 and queue.move("a", 1) == 1
    assert [run.name for run in TrainQueue.open(path).runs] == ["c", "a", "b"]
    queue.running = "a"
    with pytest.raises(QueueBusyError, match="training now"):
        queue.remove("a")
    queue.running = None
    queue.remove("a")
    assert [run.name for run in TrainQueue.open(path).runs] == ["c", "b"]

    text = path.read_text(encoding="utf-8")
    block = text[text.index("[[run]]"):text.index("[[run]]", 1)]
    path.write_text("".join(block.replace('name = "c"', f'name = "r{i}"').replace(
        'output_name = "c"', f'output_name = "r{i}"') for i in range(MAX_QUEUED_RUNS + 1)), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"at most {MAX_QUEUED_RUNS}"):
        TrainQueue.open(path)
    path.write_bytes(b"#" * (MAX_QUEUE_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        TrainQueue.open(path)
    full = TrainQueue([])
    for i in range(MAX_QUEUED_RUNS):
        full.add(tiny_config(dataset, tmp_path, output_name=f"r{i}"))
    with pytest.raises(ConfigError, match="the queue is full"):
        full.add(tiny_config(dataset, tmp_path, output_name="one-more"))
