"""Automatic state checkpoints: a run writes a state folder every N steps and when it is stopped, keeping the newest
few, so a run cut off by a crash, a kill or a closed WebUI continues from its last checkpoint, exactly.

A run's checkpoints live in one folder of their own: `<folder>/step00000100-state/` (state.py's layout, with its
manifest). A checkpoint is written between steps, when nothing of the step before is left to do (its saves,
samples and end-of-epoch work are done), so a run resumed from it repeats nothing and skips nothing.
`latest_checkpoint` gives the newest one that is whole; a torn one (a crash while it was written, a full disk) is
passed over for the one before, which is why two are kept by default.

Default: every 100 steps, the newest 2 kept. A state is the LoRA's weights and the optimizer's two moments
(12 bytes a parameter with AdamW): 113 MB for an SD1 LoRA of rank 32 and 276 MB for SDXL, written (synced and
hashed) in 0.9-1.0 s (bench/bench_queue_checkpoints.py). A step takes about 0.25-1 s on a consumer GPU, so 100
steps are at most 25 s to 2 minutes of work to redo after a crash, for 1-4% of the run's time spent writing.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .bounds import STEPS
from .errors import ConfigError, TrainingError
from .resume_state import check_state, read_position, save_state

if TYPE_CHECKING:
    from .outputs import PreparedRun, TrainResult
    from .progress import ProgressTracker

DEFAULT_EVERY_N_STEPS = 100
DEFAULT_KEEP = 2
MAX_KEEP = 20
_NAME = re.compile(r"step(\d{8})-state")


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where a run's checkpoints go, how often (optimizer steps) and how many are kept."""

    folder: Path
    every_n_steps: int = DEFAULT_EVERY_N_STEPS
    keep: int = DEFAULT_KEEP
    on_stop: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.every_n_steps, bool) or not isinstance(self.every_n_steps, int) \
                or not 1 <= self.every_n_steps <= STEPS:
            raise ConfigError("checkpoint_every_n_steps", self.every_n_steps, f"must be at least 1 and at most {STEPS}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or not 1 <= self.keep <= MAX_KEEP:
            raise ConfigError("checkpoint_keep", self.keep, f"must be at least 1 and at most {MAX_KEEP}")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step{step:08d}-state"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint in `folder`, oldest first; whole or not."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    found = [(int(match.group(1)), entry) for entry in entries if (match := _NAME.fullmatch(entry.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest whole checkpoint in `folder` (None: none), and a note for each newer one passed over as torn."""
    notes: list[str] = []
    for step, path in reversed(list_checkpoints(folder)):
        try:
            check_state(path)
            if read_position(path).step != step:
                raise TrainingError(f"resume: {path} holds another step")
        except TrainingError as error:
            notes.append(f"the checkpoint of step {step} is not whole and was passed over ({error})")
            continue
        return path, notes
    return None, notes


def clear_checkpoints(folder: Path) -> None:
    """Delete the checkpoint folder of a run that finished or was removed (its LoRA files are elsewhere)."""
    shutil.rmtree(folder, ignore_errors=True)


class AutoCheckpoints:
    """The checkpoints of one run as it trains: `between_steps` writes when one is due, `at_stop` when stopped."""

    def __init__(self, policy: CheckpointPolicy, start_step: int) -> None:
        self.policy = policy
        self.last_step = start_step
        """The step of the last checkpoint written or resumed from: never written twice."""

    def between_steps(self, run: PreparedRun, tracker: ProgressTracker, result: TrainResult, step: int) -> None:
        """Write the checkpoint of `step` (all its work done, the next not begun) when it is due."""
        if step > self.last_step and step % self.policy.every_n_steps == 0:
            self.write(run, tracker, result, step)

    def at_stop(self, run: PreparedRun, tracker: ProgressTracker, result: TrainResult, step: int) -> None:
        if self.policy.on_stop and step > self.last_step:
            self.write(run, tracker, result, step)

    def write(self, run: PreparedRun, tracker: ProgressTracker, result: TrainResult, step: int) -> None:
        """Write the checkpoint of `step`; drop newer ones (left by an earlier try of this run) and all but the
        newest `keep`. A failure is noted in the result: training goes on (the LoRA saves matter more)."""
        folder = self.policy.folder
        run.position.loss_history = list(tracker.losses)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_state(checkpoint_path(folder, step), position=run.position, network=run.network,
                       optimizer=run.optimizer, scheduler=run.scheduler, noise_generator=run.generator,
                       scaler=run.scaler)
        except (TrainingError, OSError, RuntimeError) as error:  # torch.save reports file errors as RuntimeError
            result.notes.append(f"the checkpoint of step {step} was not written: {error}")
            return
        self.last_step = step
        kept = [(s, path) for s, path in list_checkpoints(folder) if s <= step]
        for s, path in list_checkpoints(folder):
            if s > step or (s, path) in kept[:-self.policy.keep]:
                shutil.rmtree(path, ignore_errors=True)
        for leftover in folder.glob(".step*"):  # temp and old folders of a write a crash cut short
            shutil.rmtree(leftover, ignore_errors=True)
