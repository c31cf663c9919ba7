"""The Train tab's queue after a restart: what waits is shown with how far it got, nothing starts by itself, runs
are reordered and removed, and a queue file that cannot be read is kept aside. No training here (the kill and
resume runs are in test_train_queue_resume.py), so these run under A1111's pins too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_run_helpers import make_pattern_dataset, tiny_config

from lib_lora.errors import LoraStudioError
from lib_lora.train.queue import TrainQueue
from lib_lora.train.resume_state import TrainPosition, save_state
from lib_lora.ui.context import StudioContext
from lib_lora.ui.train.queue import CONTINUE_LABEL, RUN_LABEL
from lib_lora.ui.train.session import TrainSession
from lib_lora.ui.train.tab import TrainHandlers

pytestmark = pytest.mark.hostcompat


def _restarted(root: Path) -> TrainHandlers:
    """The tab as a fresh start of the WebUI builds it over the same work folder."""
    return TrainHandlers(TrainSession(StudioContext.for_folder(lambda: None, root)))


def _queue_of(root: Path, names: list[str]) -> TrainQueue:
    data = make_pattern_dataset(root / "data", count=1)
    handlers = _restarted(root)
    queue = handlers.queue.queue()
    for name in names:
        queue.add(tiny_config(data, root / "Lora", output_name=name))
    return queue


def _interrupt(queue: TrainQueue, name: str, step: int) -> None:
    """As a run killed after writing its checkpoint of `step` leaves it."""
    queue._set_status(name, "started")
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(network.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    position = TrainPosition(step=step, epoch=0, batch_in_epoch=step, seed=1, session_id=2, started_at=3.0)
    save_state(queue.checkpoint_folder(name) / f"step{step:08d}-state", position=position, network=network,
               optimizer=optimizer, scheduler=scheduler, noise_generator=torch.Generator())


def test_after_a_restart_the_queue_shows_what_waits_and_starts_nothing(tmp_path):
    _interrupt(_queue_of(tmp_path, ["first", "second"]), "first", 8)
    handlers = _restarted(tmp_path)
    shown = handlers.queue_on_load()
    assert handlers.session.job is None  # shown, not started
    assert "1. **first** — interrupted at step 8, continues from its checkpoint" in shown["queue_list"]
    assert "2. **second** — waiting" in shown["queue_list"]
    assert "Nothing starts by itself" in shown["queue_list"] and CONTINUE_LABEL in shown["queue_list"]
    assert shown["queue_run"]["value"] == CONTINUE_LABEL
    assert "2 run(s) wait" in shown["status"] and "nothing starts by itself" in shown["status"]

    handlers.queue.queue().remove("first")  # its checkpoints go with it
    assert not (tmp_path / "lora_studio" / "train" / "checkpoints" / "first").exists()
    shown = _restarted(tmp_path).queue_listing()
    assert shown["queue_run"]["value"] == RUN_LABEL and "first" not in shown["queue_list"]


def test_runs_move_up_and_down_and_are_removed_and_it_lasts(tmp_path):
    _queue_of(tmp_path, ["a", "b", "c"])
    handlers = _restarted(tmp_path)
    moved = handlers.queue_down("a")
    assert "**a** is number 2" in moved["status"] and moved["queue_pick"]["value"] == "a"
    handlers.queue_up("c")
    assert [run.name for run in _restarted(tmp_path).queue.queue().runs] == ["b", "c", "a"]
    assert "Removed **c**" in handlers.queue_remove("c")["status"]
    assert [run.name for run in _restarted(tmp_path).queue.queue().runs] == ["b", "a"]
    for action in (handlers.queue_up, handlers.queue_remove):
        with pytest.raises(LoraStudioError, match="Pick a queued run"):
            action(None)
    with pytest.raises(LoraStudioError, match="not queued"):
        handlers.queue_down("c")


def test_a_queue_file_that_cannot_be_read_is_kept_aside_and_the_tab_says_where(tmp_path):
    handlers = _restarted(tmp_path)
    path = handlers.queue.path
    path.parent.mkdir(parents=True)
    path.write_text("[[run]]\nname = 'broken'\nlearning_rate = 'fast'\n", encoding="utf-8")
    shown = handlers.queue_listing()
    [kept] = [p for p in path.parent.iterdir() if p.name.startswith("queue.toml.unreadable-")]
    assert kept.read_text(encoding="utf-8").endswith("learning_rate = 'fast'\n")  # nothing lost
    assert "could not be read" in shown["queue_list"] and kept.name in shown["queue_list"]
    assert "learning\\_rate = 'fast'" in shown["queue_list"] and "The queue is empty." in shown["queue_list"]
