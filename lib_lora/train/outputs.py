"""What a run produces besides the weights in memory: its result record, sample images, saved files and states.

`RunOutputs` writes for one run (only on rank 0 when there are several processes, the others wait): samples
through the host, the LoRA file with its metadata, the Lora card files, and state folders to resume from.
Nothing a run learned is lost to a save: a file it replaces that it did not write itself is backed up first
(`backups.py`), and a LoRA that cannot be written where asked is written under a safe name beside it or in the
temp folder, else kept in memory (`TrainResult.unsaved`); the result and its notes say where it went.
`check_run_outputs` checks every name a run will write before any work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..backups import back_up, backup_stamp
from ..errors import LoraStudioError
from ..file_names import check_output_files, check_writable_folder
from ..networks.loaders import CARD_KEY, card_entry
from ..wording import plural
from .errors import ConfigError
from .progress import ProgressTracker, path_text
from .resume_state import NETWORK_FILE, TrainPosition, save_state
from .sampling import SamplePrompt, render_samples, sample_path
from .saving import (
    SAVE_DTYPES,
    RunFacts,
    build_metadata,
    card_sidecar,
    epoch_name,
    lora_path,
    read_sidecar,
    save_or_rescue,
    step_name,
    write_card_files,
)

if TYPE_CHECKING:
    from ..hosts.base import Host
    from .config import TrainConfig
    from .data import TrainData
    from .distributed import Distributed
    from .network.trainable import TrainableNetwork
    from .runtime import Precision
    from .step_loss import LossSettings
    from .validation_run import RunValidation


@dataclass
class TrainResult:
    """What a run produced. `output` is the final LoRA (or, after a stop, the save of what was learned)."""

    output: Path | None
    steps: int
    epochs: int
    cancelled: bool = False
    saved: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    state_dirs: list[Path] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backups: list[Path] = field(default_factory=list)
    """Files of the same names that the saves replaced, as kept in `.lora_studio_backup/`."""
    save_problem: str | None = None
    """Why the last LoRA is not where it was asked to go (then `output` is where it is, or None: in memory)."""
    unsaved: dict[str, Any] | None = None
    """{"tensors", "metadata"} of a LoRA no folder would take: the weights, kept for the caller to write."""
    preview: Path | None = None
    """The `<name>.preview.png` written beside the last LoRA with its card (None: no sample to make one from)."""
    validation_history: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) of every validation measurement (validation_run.py), in order."""

    def summary(self) -> str:
        loss = f", loss {sum(self.loss_history[-10:]) / len(self.loss_history[-10:]):.4f}" if self.loss_history else ""
        if self.validation_history:
            loss += ", validation loss {1:.4f} at step {0}".format(*self.validation_history[-1])
        verb = "stopped; saved" if self.cancelled else "wrote"
        where = self.output if self.output is not None else "nothing"
        problem = f" — {self.save_problem}" if self.save_problem else ""
        return (f"{verb} {where} ({plural(self.steps, 'step')}, {plural(self.epochs, 'full epoch')}{loss}, "
                f"{self.seconds:.1f} s){problem}")


@dataclass
class PreparedRun:
    """Everything the first stages build, for the training stage and the saves."""

    data: TrainData
    network: TrainableNetwork
    optimizer: Any
    scheduler: Any
    scaler: Any
    params: list[torch.nn.Parameter]
    precision: Precision
    settings: LossSettings
    alphas_cumprod: torch.Tensor
    generator: torch.Generator
    position: TrainPosition
    batches_per_epoch: int
    total_steps: int
    total_epochs: int
    facts: RunFacts
    prompts: list[SamplePrompt]
    encode_with_grad: bool
    validation: RunValidation | None = None
    """The run's validation (None: it has no validation images)."""


class RunOutputs:
    """The files of one run under `output_dir`: samples, LoRA saves with their card, state folders."""

    def __init__(self, config: TrainConfig, host: Host, output_dir: Path, dist: Distributed) -> None:
        self.config = config
        self.host = host
        self.output_dir = output_dir
        self.dist = dist

    def samples(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, *, step: int) -> None:
        """Render the sample prompts with the network as it is at `step`; the first image becomes the preview.

        A failing sample does not end the run (the weights matter more than a preview): it is noted in the result
        and sampling stops for the rest of the run.
        """
        failed = False
        if self.dist.is_main:
            try:
                paths = render_samples(self.host, run.prompts, modules=[run.network], output_dir=self.output_dir,
                                       output_name=self.config.run.output_name, step=step,
                                       run_seed=run.position.seed, default_size=self.config.data.resolution)
            except LoraStudioError as error:
                result.notes.append(f"samples stopped at step {step}: {error}")
                failed = True
            else:
                result.samples.extend(paths)
                tracker.sample = path_text(paths[0]) if paths else tracker.sample
        if self.dist.any_true(failed):  # every rank stops sampling, so they keep meeting at the same points
            run.prompts = []
        self.dist.barrier()

    def save(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, stem: str, *, step: int, epoch: int,
             card: bool = False, finished: bool = False, with_state: bool | None = None) -> Path | None:
        """Save `<stem>.safetensors` (and its card files, and a state folder when asked or save_state is on).

        Returns where the LoRA went: the asked path, a rescue file when that could not be written (the reason in
        the notes and, for a card save, `result.save_problem`), or None when it is kept in memory only. A card
        save with no sample rendered yet (a stop before the first) renders one for its preview.
        """
        cfg = self.config.run
        if card and run.prompts and self.dist.broadcast_int(int(tracker.sample is None)):  # rank 0 keeps samples
            self.samples(run, result, tracker, step=step)
        path: Path | None = lora_path(self.output_dir, stem)
        if self.dist.is_main:
            if run.validation is not None:  # every file records the validation loss of its own weights
                run.validation.before_save(run, result, step)
            metadata = build_metadata(self.config, run.facts, step=step, epoch=epoch, finished=finished)
            tensors = run.network.kohya_state_dict(SAVE_DTYPES[cfg.save_precision])
            stamp = backup_stamp()  # the files one save replaces are backed up under one time
            path = self._write(lora_path(self.output_dir, stem), tensors, metadata, result, last=card, stamp=stamp)
            if path is not None:
                result.saved.append(path)
                tracker.saved = str(path)
            if card and path == lora_path(self.output_dir, stem):
                self._card(run, result, tracker, path, stamp=stamp)
            if with_state if with_state is not None else cfg.save_state:
                self._state(run, result, tracker, self.output_dir / f"{stem}-state")
        self.dist.barrier()
        return path

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], result: TrainResult,
               *, last: bool, stamp: str) -> Path | None:
        """Write the LoRA at `path` (backing up a file there this run did not write), else rescue it."""
        try:
            backup = None if path in result.saved else back_up(path, stamp=stamp)
        except LoraStudioError as error:
            where, problem = save_or_rescue(path, tensors, metadata, refused=str(error))
        else:
            if backup is not None:
                result.backups.append(backup)
                result.notes.append(f"the {path.name} that was there is kept as {backup}")
            where, problem = save_or_rescue(path, tensors, metadata)
        if problem is not None:
            result.notes.append(problem)
            if last:
                result.save_problem = problem
            if where is None:
                result.unsaved = {"tensors": tensors, "metadata": metadata}
        return where

    def _card(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, path: Path, *,
              stamp: str) -> None:
        """The Lora card files beside `path`; a failure is noted (the LoRA itself is written)."""
        cfg = self.config.run
        sidecar = card_sidecar(run.facts.arch, activation_text=run.facts.activation_text,
                               preferred_weight=cfg.preferred_weight, notes=cfg.notes, existing=read_sidecar(path))
        sidecar[CARD_KEY] = card_entry(path)  # what each program's loader would apply of the file
        preview = Path(tracker.sample) if tracker.sample else None
        try:
            written, backups = write_card_files(path, sidecar, preview, stamp=stamp)
        except LoraStudioError as error:
            result.notes.append(f"the LoRA is written, its card files are not: {error}")
        else:
            result.backups.extend(backups)
            result.preview = next((file for file in written if file.name.endswith(".preview.png")), None)

    def _state(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, folder: Path) -> None:
        """A state folder to resume from; a failure is noted (the LoRA matters more)."""
        run.position.loss_history = list(tracker.losses)
        try:
            save_state(folder, position=run.position, network=run.network, optimizer=run.optimizer,
                       scheduler=run.scheduler, noise_generator=run.generator, scaler=run.scaler)
        except (LoraStudioError, OSError, RuntimeError) as error:  # torch.save reports file errors as RuntimeError
            result.notes.append(f"the training state {folder} was not written: {error}")
        else:
            result.state_dirs.append(folder)


# --- the names a run writes, checked before any work --------------------------------------------------------------


def planned_files(config: TrainConfig, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Every file and folder a run of `config` may write in `output_dir`, with the longest names its numbers give:
    the LoRA, step saves (save_every_n_steps, a stop's with save_on_cancel) and epoch saves, their card files and
    state folders (with the hidden name a state folder is written under first), and the samples. (A Save now
    whose name cannot be written is rescued like any save.)"""
    run, folder = config.run, Path(output_dir)
    name = run.output_name
    steps = 1 if run.max_train_epochs else run.max_train_steps
    step_stem = step_name(name, steps)
    stems = [name]
    if run.save_every_n_steps or run.save_on_cancel:
        stems.append(step_stem)
    if run.save_every_n_epochs:
        stems.append(epoch_name(name, run.max_train_epochs or 1))
    files = [lora_path(folder, stem) for stem in stems]
    for stem in [name, step_stem] if run.save_on_cancel else [name]:
        files += [folder / f"{stem}.json", folder / f"{stem}.preview.png"]
    state_stems = stems if run.save_state else [name] if run.save_state_on_train_end else []
    for stem in state_stems:
        files += [folder / f"{stem}-state" / NETWORK_FILE, folder / f".{stem}-state.00000000.tmp"]
    if run.sample_prompts:
        files.append(sample_path(folder, name, steps, 0))
    return files


def check_run_outputs(config: TrainConfig, output_dir: str | os.PathLike[str] | None, *,
                      writable: bool = True, also: Iterable[Path] = ()) -> Path:
    """`output_dir` as a Path once every file a run of `config` writes there (`planned_files`, and `also`) has a
    name its file system holds and, when `writable`, the folder can be written; ConfigError/FileNameError naming
    the option to change otherwise. Run it before any work."""
    if output_dir is None:
        raise ConfigError("output_dir", None, "set the folder the LoRA is written to")
    folder = Path(output_dir).expanduser()
    check_output_files([folder], option="output_dir", value=str(output_dir))
    check_output_files([*planned_files(config, folder), *also], option="output_name", value=config.run.output_name)
    if writable:
        check_writable_folder(folder, option="output_dir")
    return folder


def existing_output(config: TrainConfig, output_dir: str | os.PathLike[str]) -> Path | None:
    """The LoRA a run of `config` would replace at its end, when there is one."""
    path = lora_path(Path(output_dir).expanduser(), config.run.output_name)
    with contextlib.suppress(OSError):
        if path.exists():
            return path
    return None
