"""The interface every training mode implements, and what its phases share.

TrainRun (loop.py) asks its mode three things: `data` (the batches of an epoch), `loss` (one batch's loss, with
grad to the network) and `execute` (the whole run inside the host's training mode: one training pass for most
modes; a mode with phases runs child runs, `phase_run`, and acts between them). The defaults are the plain LoRA
run's; a mode overrides what it changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..errors import TrainingError

if TYPE_CHECKING:
    from ...jobs import JobControl
    from ..config import TrainConfig
    from ..loop import TrainRun
    from ..outputs import PreparedRun, TrainResult
    from ..progress import ProgressTracker
    from ..resume_state import TrainPosition


class DataSource(Protocol):
    """What a run reads its batches from (TrainData for images and captions)."""

    ignored: list[str]
    """Inputs left out, with the reason (listed in the run's notes)."""

    def prepare(self, control: JobControl | None = None) -> None: ...
    def __len__(self) -> int: ...
    def batches(self, epoch: int) -> Iterator[Any]: ...
    def metadata(self) -> dict[str, str]: ...


class TrainingMode:
    """One kind of training. Subclasses set `name` and override `data`, `loss` and/or `execute`."""

    name = "lora"

    def data(self, trainer: TrainRun, *, seed: int) -> DataSource:
        """The run's data source (not yet prepared)."""
        raise NotImplementedError

    def loss(self, trainer: TrainRun, run: PreparedRun, batch: Any) -> torch.Tensor:
        """The mean loss of `batch`: a 0-dim float32 tensor with grad to the network's parameters."""
        raise NotImplementedError

    def execute(self, trainer: TrainRun, control: JobControl | None, notes: list[str], *, started: float,
                seed: int, resume: TrainPosition | None) -> TrainResult:
        """The run, inside the host's training mode with the GPU gate held; the default is one training pass."""
        if self.name != "lora":
            one_process(trainer, self.name)
        return trainer.train_once(control, notes, started=started, seed=seed, resume=resume)


def one_process(trainer: TrainRun, name: str) -> None:
    """TrainingError when `trainer` runs under a launcher: modes other than lora train in one process."""
    if trainer.dist.active:
        raise TrainingError(f"the {name} mode trains in one process; start it without a launcher")


class DiscardedOutputs:
    """The outputs of a phase whose network is not a result (a copy LoRA, a round): nothing is written."""

    def samples(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, *, step: int) -> None:
        return None

    def save(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, stem: str, **_: Any) -> None:
        return None


def phase_run(trainer: TrainRun, config: TrainConfig, mode: TrainingMode, *, keep_files: bool) -> TrainRun:
    """A child run of `trainer` for one phase: the same host, folder, progress and presets, no GPU gate of its own
    (the parent holds it), `config` and `mode` its own; with `keep_files` False it writes nothing."""
    child = type(trainer)(config, trainer.host, output_dir=trainer.output_dir, distributed=trainer.dist,
                          cache_dir=trainer.cache_dir, on_step=trainer.on_step, presets=trainer.presets,
                          keep_files=keep_files)
    child.mode = mode
    return child


def run_phase(trainer: TrainRun, child: TrainRun, control: JobControl | None, notes: list[str], *, started: float,
              seed: int) -> TrainResult:
    """Train `child` as the current phase of `trainer` (a stop of the parent reaches it), from a fresh start."""
    trainer.phase = child
    try:
        if trainer.stop_requested:
            child.request_stop()
        return child.train_once(control, notes, started=started, seed=seed, resume=None)
    finally:
        trainer.phase = None
