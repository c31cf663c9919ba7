"""TrainRun: one LoRA training run on the host's loaded model, as named stages, reporting through a JobControl.

Stages: prepare data → build network → build optimizer (stages.py) → train → save. All of it runs inside
`host.training_mode()` (base model frozen, restored on exit, also on errors and stops) with the network hooked on
by `network.attached()`, the GPU gate held, and gradient checkpointing, clip skip and the CPU convolution kernel
(`cpu_convs`) set for the run only. A stop (JobControl cancel or `request_stop()`) ends the run between steps and,
unless save_on_cancel is off, saves what was learned; `request_save()` saves now and goes on. Exceptions
propagate once the host is restored. The training mode (modes/) supplies the data, each batch's loss and phases.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..jobs import Job, JobControl
from .checkpoints import AutoCheckpoints, CheckpointPolicy
from .config import TrainConfig
from .cpu_convs import small_map_convolutions
from .distributed import Distributed
from .errors import TrainingError
from .fp8_storage import fp8_base_stored
from .modes.registry import DiscardedOutputs, mode_for
from .optim import check_optimizer
from .outputs import PreparedRun, RunOutputs, TrainResult, check_run_outputs
from .progress import ProgressTracker, TrainProgress
from .resume_state import TrainPosition, read_position
from .runtime import clip_skip_set, gradient_checkpointing, seeded_global_rng
from .saving import epoch_name, lora_path, rotate_epoch_saves, rotate_step_saves, step_name
from .stages import STAGES, enter_stage, prepare_run

if TYPE_CHECKING:
    from ..blocks.presets import PresetBook
    from ..hosts.base import Host
    from ..jobs import GpuGate

__all__ = ["STAGES", "TrainResult", "TrainRun"]


class TrainRun:
    """One run of `config` on `host`. Create it, then `run(control)` (or `job().start()`) once."""

    def __init__(
        self,
        config: TrainConfig,
        host: Host,
        *,
        output_dir: Path | str | None = None,
        gpu: GpuGate | None = None,
        distributed: Distributed | None = None,
        cache_dir: Path | None = None,
        on_step: Callable[[TrainProgress], None] | None = None,
        presets: PresetBook | None = None,
        keep_files: bool = True,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self.config = config
        self.host = host
        # every name the run writes, and the folder, are checked now: nothing is trained for a save that must fail
        self.output_dir = check_run_outputs(config, output_dir if output_dir is not None else config.run.output_dir)
        check_optimizer(config.optimizer)  # and an optimizer that is not installed, or arguments it does not take
        self.gpu = gpu
        self.dist = distributed or Distributed()
        self.cache_dir = cache_dir
        self.on_step = on_step
        self.presets = presets
        self.checkpoints = checkpoints
        """Automatic state checkpoints (checkpoints.py; single-process runs): None writes none."""
        self._outputs = RunOutputs(config, host, self.output_dir, self.dist) if keep_files else DiscardedOutputs()
        self.mode = mode_for(config.mode.training_mode)  # what the run learns and from what (modes/)
        self.phase: TrainRun | None = None  # the child run of a mode's current phase (a stop reaches it)
        self.prepared: PreparedRun | None = None  # what the first stages built (train_once)
        self._stop = False
        self._save_now = False
        self.result: TrainResult | None = None
        """The result once `run()` has returned."""

    @property
    def output_path(self) -> Path:
        """Where the finished LoRA goes (the Train tab checks it before starting)."""
        return lora_path(self.output_dir, self.config.run.output_name)

    def request_stop(self) -> None:
        """Stop between steps (saving what was learned when save_on_cancel is on)."""
        self._stop = True
        if self.phase is not None:
            self.phase.request_stop()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def request_save(self) -> None:
        """Save a step file (and state, with save_state) after the current step; training goes on."""
        self._save_now = True

    def job(self, name: str | None = None) -> Job[TrainResult]:
        """A background job running this run (not started)."""
        return Job(name or f"training {self.config.run.output_name}", self.run)

    # --- the run ---------------------------------------------------------------------------------------------------
    def run(self, control: JobControl | None = None) -> TrainResult:
        """Train; returns the result (also after a stop). The host is restored however this ends."""
        started = time.time()
        notes = list(self.config.notes)
        resume = read_position(Path(self.config.run.resume)) if self.config.run.resume else None
        seed = self._seed(resume, notes)
        with self._gpu_held(), self.host.training_mode(), seeded_global_rng(seed):
            with clip_skip_set(self.host, self.config.run.clip_skip) as clip_note, \
                    gradient_checkpointing(self.host.unet, self.config.run.gradient_checkpointing), \
                    small_map_convolutions(self.host.unet, enabled=self.host.device.type == "cpu"):
                if clip_note:
                    notes.append(clip_note)
                result = self.mode.execute(self, control, notes, started=started, seed=seed, resume=resume)
        result.seconds = time.time() - started
        self.result = result
        return result

    def train_once(self, control: JobControl | None, notes: list[str], *, started: float, seed: int,
                   resume: TrainPosition | None) -> TrainResult:
        """Prepare the stages and train with the network attached (inside the caller's training mode).

        The base is stored in float8 (fp8_base) for this pass only: a mode that merges between passes (rounds,
        difference) merges into the full-precision weights, where a LoRA's small change is not rounded away."""
        with fp8_base_stored(self.host, fp8_base=self.config.run.fp8_base,
                             fp8_base_unet=self.config.run.fp8_base_unet) as fp8_report:
            if fp8_report is not None and fp8_report.note() not in notes:
                notes.append(fp8_report.note())
            run = self.prepared = prepare_run(self, control, notes, started, seed=seed, resume=resume)
            with run.network.attached():
                return self._train(run, control, notes)

    @contextmanager
    def _gpu_held(self) -> Iterator[None]:
        if self.gpu is None:
            yield
        else:
            with self.gpu.hold("training", stop="press Stop in the Train tab to stop it, or wait for it"):
                yield

    def _seed(self, resume: TrainPosition | None, notes: list[str]) -> int:
        configured = self.config.run.seed
        if resume is not None:
            if configured is not None and configured != resume.seed:
                notes.append(f"seed {configured} ignored: the resumed run's seed {resume.seed} continues")
            return resume.seed
        if configured is not None:
            return configured
        return self.dist.broadcast_int(random.randrange(2**31))

    # --- stage: train ----------------------------------------------------------------------------------------------
    def _train(self, run: PreparedRun, control: JobControl | None, notes: list[str]) -> TrainResult:
        enter_stage(control, 3)
        loop = self._start_loop(run, notes)
        position = run.position
        for epoch in range(position.epoch, run.total_epochs):
            self._train_epoch(run, control, loop, epoch)
            if loop.stopped or loop.step >= run.total_steps:
                break
            position.epoch, position.batch_in_epoch = epoch + 1, 0
            loop.result.epochs = epoch + 1
            self._after_epoch(run, loop, epoch + 1)

        enter_stage(control, 4, check=False)
        self._finish(run, control, loop, notes)
        return loop.result

    def _start_loop(self, run: PreparedRun, notes: list[str]) -> _Loop:
        """The loop's state at the run's position; a fresh run first measures and samples the untrained network."""
        position = run.position
        tracker = ProgressTracker(run.total_steps, run.total_epochs)
        tracker.restore(position.loss_history)
        auto = AutoCheckpoints(self.checkpoints, position.step) \
            if self.checkpoints is not None and not self.dist.active else None
        result = TrainResult(output=None, steps=position.step, epochs=position.epoch, notes=notes,
                             loss_history=tracker.losses)
        if run.validation is not None:  # a resumed run's curve and metadata go on from its measurements
            run.validation.restore(position.validation_history, result)
        loop = _Loop(tracker, result, auto, step=position.step)
        if run.validation is not None and position.step == 0:  # the curve starts at the untrained network's value
            run.validation.measure(run, result, 0)
        if self.config.run.sample_at_first and position.step == 0 and run.prompts:
            self._sample(run, loop)
        return loop

    def _train_epoch(self, run: PreparedRun, control: JobControl | None, loop: _Loop, epoch: int) -> None:
        """The steps of one epoch (from the resumed batch); a stop sets `loop.stopped` and ends it."""
        cfg = self.config.run
        accumulation = cfg.gradient_accumulation_steps
        skip = run.position.batch_in_epoch if epoch == run.position.epoch else 0
        for index, batch in enumerate(run.data.batches(epoch)):
            if index < skip:
                continue
            if index >= run.batches_per_epoch or loop.step >= run.total_steps:
                break
            if loop.auto is not None and not loop.micro_losses:  # between steps: the last one's work all done
                loop.auto.between_steps(run, loop.tracker, loop.result, loop.step)
            loop.micro_losses.append(self._backward(run, batch, accumulation))
            if len(loop.micro_losses) < accumulation and index < run.batches_per_epoch - 1:
                continue
            self._optimizer_step(run)
            self._log_step(run, control, loop, epoch, index)
            self._after_step(run, control, loop, epoch)
            if loop.stopped:
                return

    def _after_step(self, run: PreparedRun, control: JobControl | None, loop: _Loop, epoch: int) -> None:
        """After a step: validate when due; unless it was the last step, stop if asked, else sample and save when
        due (a save asked for with `request_save()` too)."""
        cfg = self.config.run
        if run.validation is not None:
            run.validation.after_step(run, loop.result, loop.step)
        if loop.step >= run.total_steps:
            return
        if self.dist.any_true(self._stop or (control is not None and control.cancelled)):
            loop.stopped = True
            return
        if self._due(cfg.sample_every_n_steps, loop.step) and run.prompts:
            self._sample(run, loop)
        save_now = self.dist.any_true(self._save_now)
        self._save_now = False
        if save_now or self._due(cfg.save_every_n_steps, loop.step):
            self._save_step(run, loop, epoch, rotate=not save_now)

    def _after_epoch(self, run: PreparedRun, loop: _Loop, epochs_done: int) -> None:
        """After an epoch: validate when due; unless it was the last epoch, sample and save when due."""
        cfg = self.config.run
        if run.validation is not None:
            run.validation.after_epoch(run, loop.result, epochs_done, loop.step)
        if epochs_done >= run.total_epochs:
            return
        if self._due(cfg.sample_every_n_epochs, epochs_done) and run.prompts:
            self._sample(run, loop)
        if self._due(cfg.save_every_n_epochs, epochs_done):
            self._save_epoch(run, loop, epochs_done)

    # --- the periodic actions: log, sample, save (validation_run.py decides when it measures) ------------------------
    @staticmethod
    def _due(every_n: int | None, count: int) -> bool:
        """Whether an action done every `every_n` steps or epochs (0 or None: never) is due at `count`."""
        if not every_n:
            return False
        return count % every_n == 0

    def _log_step(self, run: PreparedRun, control: JobControl | None, loop: _Loop, epoch: int, index: int) -> None:
        """Count the step just taken (its loss the mean over its micro-batches) and report it."""
        loop.step += 1
        loss = sum(loop.micro_losses) / len(loop.micro_losses)
        loop.micro_losses.clear()
        run.position.step, run.position.epoch, run.position.batch_in_epoch = loop.step, epoch, index + 1
        loop.result.steps = loop.step
        loop.result.epochs = epoch + (1 if index + 1 >= run.batches_per_epoch else 0)
        progress = loop.tracker.step(step=loop.step, epoch=epoch + 1, loss=loss, lr=_current_lr(run.scheduler),
                                     memory_bytes=_memory_in_use(self.host.device))
        self._report(control, progress)

    def _sample(self, run: PreparedRun, loop: _Loop) -> None:
        self._outputs.samples(run, loop.result, loop.tracker, step=loop.step)
        loop.last_sample_step = loop.step

    def _save_step(self, run: PreparedRun, loop: _Loop, epoch: int, *, rotate: bool) -> None:
        """A step file (every save_every_n_steps, or asked for); the periodic ones keep save_last_n_steps."""
        cfg = self.config.run
        self._outputs.save(run, loop.result, loop.tracker, step_name(cfg.output_name, loop.step), step=loop.step,
                           epoch=epoch)
        if rotate and cfg.save_last_n_steps and self.dist.is_main:
            rotate_step_saves(self.output_dir, cfg.output_name, current_step=loop.step,
                              keep_last_n_steps=cfg.save_last_n_steps)

    def _save_epoch(self, run: PreparedRun, loop: _Loop, epochs_done: int) -> None:
        """An epoch file (every save_every_n_epochs), keeping save_last_n_epochs of them."""
        cfg = self.config.run
        self._outputs.save(run, loop.result, loop.tracker, epoch_name(cfg.output_name, epochs_done), step=loop.step,
                           epoch=epochs_done)
        if cfg.save_last_n_epochs and self.dist.is_main:
            rotate_epoch_saves(self.output_dir, cfg.output_name, current_epoch=epochs_done,
                               keep_last_n=cfg.save_last_n_epochs, every_n_epochs=cfg.save_every_n_epochs)

    def _finish(self, run: PreparedRun, control: JobControl | None, loop: _Loop, notes: list[str]) -> None:
        """Stage 5: the final LoRA (or, after a stop, what was learned), the last sample and the closing report."""
        cfg, step, result = self.config.run, loop.step, loop.result
        if self.dist.active:
            self.dist.check_in_sync(run.params)
            notes.append(f"the {self.dist.world_size} processes ended with identical weights")
        if loop.stopped:
            result.cancelled = True
            if loop.auto is not None:
                loop.auto.at_stop(run, loop.tracker, result, step)
            if cfg.save_on_cancel and step > 0:
                result.output = self._outputs.save(run, result, loop.tracker, step_name(cfg.output_name, step),
                                                   step=step, epoch=result.epochs, card=True)
        else:
            if run.prompts and loop.last_sample_step != step:
                self._outputs.samples(run, result, loop.tracker, step=step)
            with_state = cfg.save_state or cfg.save_state_on_train_end
            result.output = self._outputs.save(run, result, loop.tracker, cfg.output_name, step=step,
                                               epoch=result.epochs, card=True, finished=True, with_state=with_state)
        if control is not None:  # the saves and the last sample come after the last step's report
            control.progress(message=("stopped at" if loop.stopped else "finished after") + f" step {step}",
                             saved=loop.tracker.saved, sample=loop.tracker.sample)

    def _backward(self, run: PreparedRun, batch: Any, accumulation: int) -> float:
        loss = self.mode.loss(self, run, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"the loss is not finite ({value}) at step {run.position.step + 1}: lower the "
                                "learning rate, or use mixed_precision bf16 instead of fp16")
        scaled = loss / accumulation
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        return value

    def _optimizer_step(self, run: PreparedRun) -> None:
        self.dist.average_gradients(run.params)
        max_norm = self.config.optimizer.max_grad_norm
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        if max_norm and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(run.params, max_norm)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if self.config.network.scale_weight_norms:
            run.network.apply_max_norm(self.config.network.scale_weight_norms)

    def _report(self, control: JobControl | None, progress: TrainProgress) -> None:
        if control is not None:
            control.progress(done=progress.step, total=progress.total_steps, message=progress.message,
                             **progress.as_extra())
        if self.on_step is not None:
            self.on_step(progress)


@dataclass
class _Loop:
    """The train stage's running state: where it is, what it has reported, and the loss of the step in progress."""

    tracker: ProgressTracker
    result: TrainResult
    auto: AutoCheckpoints | None
    step: int
    micro_losses: list[float] = field(default_factory=list)
    """The losses of the micro-batches accumulated into the step in progress."""
    last_sample_step: int = -1
    stopped: bool = False


def _current_lr(scheduler: Any) -> float | None:
    with contextlib.suppress(AttributeError, IndexError, TypeError):
        return float(scheduler.get_last_lr()[0])
    return None


def _memory_in_use(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
