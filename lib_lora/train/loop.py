"""TrainRun: one LoRA training run on the host's loaded model, as named stages, reporting through a JobControl.

Stages: prepare data → build network → build optimizer → train → save. All of it runs inside
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..jobs import Job, JobControl
from .checkpoints import AutoCheckpoints, CheckpointPolicy
from .config import TrainConfig
from .cpu_convs import small_map_convolutions
from .distributed import Distributed
from .errors import ConfigError, TrainingError
from .fp8_storage import fp8_base_stored
from .modes.registry import DiscardedOutputs, mode_for
from .network.trainable import TrainableNetwork
from .optim import build_optimizer, check_optimizer, optimizer_notes
from .outputs import PreparedRun, RunOutputs, TrainResult, check_run_outputs
from .progress import ProgressTracker, TrainProgress
from .resume_state import TrainPosition, load_state, read_position
from .runtime import choose_precision, clip_skip_set, gradient_checkpointing, seeded_global_rng
from .sampling import load_sample_prompts
from .saving import (
    RunFacts,
    default_activation_text,
    epoch_name,
    host_model_name,
    lora_path,
    rotate_epoch_saves,
    rotate_step_saves,
    step_name,
)
from .schedule import build_scheduler
from .step_loss import LossSettings
from .validation_run import prepare_run_validation
from .vram import check_fits

if TYPE_CHECKING:
    from ..blocks.presets import PresetBook
    from ..hosts.base import Host
    from ..jobs import GpuGate

__all__ = ["STAGES", "TrainResult", "TrainRun"]

STAGES = ("prepare data", "build network", "build optimizer", "train", "save")


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
                    small_map_convolutions(self.host.unet, enabled=self.host.device.type == "cpu"), \
                    fp8_base_stored(self.host, fp8_base=self.config.run.fp8_base,
                                    fp8_base_unet=self.config.run.fp8_base_unet) as fp8_report:
                if clip_note:
                    notes.append(clip_note)
                if fp8_report is not None:
                    notes.append(fp8_report.note())
                result = self.mode.execute(self, control, notes, started=started, seed=seed, resume=resume)
        result.seconds = time.time() - started
        self.result = result
        return result

    def train_once(self, control: JobControl | None, notes: list[str], *, started: float, seed: int,
                   resume: TrainPosition | None) -> TrainResult:
        """Prepare the stages and train with the network attached (inside the caller's training mode)."""
        run = self.prepared = self._prepare(control, notes, started, seed=seed, resume=resume)
        with run.network.attached():
            return self._train(run, control, notes)

    @contextmanager
    def _gpu_held(self) -> Iterator[None]:
        if self.gpu is None:
            yield
        else:
            with self.gpu.hold("training", stop="press Stop in the Train tab to stop it, or wait for it"):
                yield

    # --- stages: prepare data, build network, build optimizer --------------------------------------------------------
    def _stage(self, control: JobControl | None, index: int, *, check: bool = True) -> None:
        if control is not None:
            if check:
                control.check()
            control.progress(message=f"{STAGES[index]} ({index + 1}/{len(STAGES)})", stage=STAGES[index])

    def _prepare(self, control: JobControl | None, notes: list[str], started: float, *, seed: int,
                 resume: TrainPosition | None) -> PreparedRun:
        config, host, dist = self.config, self.host, self.dist
        run_cfg = config.run
        v_prediction = host.prediction_type == "v_prediction"
        if run_cfg.v_parameterization and not v_prediction:
            raise ConfigError("v_parameterization", True, "the loaded model predicts epsilon (noise), not v")

        self._stage(control, 0)
        check_fits(config, host, presets=self.presets)  # before any image is read: refuse a run that cannot fit
        data = self.mode.data(self, seed=seed)
        data.prepare(control)
        notes.extend(f"left out: {item}" for item in data.ignored)
        batches_per_epoch = dist.min_int(len(data))
        if batches_per_epoch < 1:
            raise TrainingError("the data gives no batch")
        accumulation = run_cfg.gradient_accumulation_steps
        updates_per_epoch = math.ceil(batches_per_epoch / accumulation)
        if run_cfg.max_train_epochs:
            total_epochs = run_cfg.max_train_epochs
            total_steps = total_epochs * updates_per_epoch
        else:
            total_steps = run_cfg.max_train_steps
            total_epochs = math.ceil(total_steps / updates_per_epoch)

        self._stage(control, 1)
        precision = choose_precision(run_cfg.mixed_precision, full_fp16=run_cfg.full_fp16,
                                     full_bf16=run_cfg.full_bf16, host_dtype=host.dtype, device=host.device)
        notes.extend(precision.notes)
        validation = prepare_run_validation(config, host, run_seed=seed, precision=precision, control=control) \
            if dist.is_main else None
        network = TrainableNetwork.create(config.network, host, seed=seed, presets=self.presets)
        if precision.network_dtype is not torch.float32:
            network.to(precision.network_dtype)
        network.train()

        self._stage(control, 2)
        opt = config.optimizer
        groups = network.param_groups(unet_lr=opt.unet_lr, text_encoder_lr=opt.text_encoder_lr,
                                      learning_rate=opt.learning_rate)
        if not groups:
            raise ConfigError("learning_rate", opt.learning_rate, "every learning rate is 0: nothing would train")
        notes.extend(optimizer_notes(opt, groups))
        optimizer = build_optimizer(opt, groups)
        scheduler = build_scheduler(opt, optimizer, total_steps=total_steps)
        scaler = torch.amp.GradScaler(host.device.type) if precision.use_grad_scaler else None
        params = [p for group in groups for p in group["params"]]
        generator = torch.Generator().manual_seed(seed + 1_000_003 * dist.rank)
        position = TrainPosition(step=0, epoch=0, batch_in_epoch=0, seed=seed,
                                 session_id=random.Random(seed ^ int(started)).randrange(2**31), started_at=started,
                                 world_size=dist.world_size)
        if resume is not None:
            if resume.world_size != dist.world_size:
                raise TrainingError(f"resume: the state was written by {resume.world_size} process(es), "
                                    f"this run has {dist.world_size}")
            position = load_state(Path(run_cfg.resume), network=network, optimizer=optimizer, scheduler=scheduler,
                                  noise_generator=generator, scaler=scaler)
            if position.batch_in_epoch >= batches_per_epoch:
                position.epoch, position.batch_in_epoch = position.epoch + 1, 0
        data_metadata = data.metadata()
        facts = RunFacts(
            arch=host.arch.name, prediction_type=host.prediction_type, model_name=host_model_name(host), seed=seed,
            session_id=position.session_id, started_at=position.started_at, total_steps=total_steps,
            total_epochs=total_epochs, optimizer=opt.describe(),
            data_metadata=data_metadata, network_metadata=network.metadata(),
            activation_text=run_cfg.activation_text or default_activation_text(data_metadata.get("ss_dataset_dirs")),
        )
        prompts = load_sample_prompts(run_cfg.sample_prompts) if run_cfg.sample_prompts else []
        return PreparedRun(data=data, network=network, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    params=params, precision=precision, settings=LossSettings.from_run(run_cfg,
                                                                                       v_prediction=v_prediction),
                    alphas_cumprod=host.alphas_cumprod(), generator=generator, position=position,
                    batches_per_epoch=batches_per_epoch, total_steps=total_steps, total_epochs=total_epochs,
                    facts=facts, prompts=prompts,
                    encode_with_grad=network.trains_text_encoder and not run_cfg.cache_text_encoder_outputs,
                    validation=validation)

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
        self._stage(control, 3)
        cfg = self.config.run
        position = run.position
        tracker = ProgressTracker(run.total_steps, run.total_epochs)
        tracker.restore(position.loss_history)
        auto = AutoCheckpoints(self.checkpoints, position.step) \
            if self.checkpoints is not None and not self.dist.active else None
        result = TrainResult(output=None, steps=position.step, epochs=position.epoch, notes=notes,
                             loss_history=tracker.losses)
        if run.validation is not None:  # a resumed run's curve and metadata go on from its measurements
            run.validation.restore(position.validation_history, result)
        last_sample_step = -1
        if run.validation is not None and position.step == 0:  # the curve starts at the untrained network's value
            run.validation.measure(run, result, 0)
        if cfg.sample_at_first and position.step == 0 and run.prompts:
            self._outputs.samples(run, result, tracker, step=0)
            last_sample_step = 0
        accumulation = cfg.gradient_accumulation_steps
        micro_losses: list[float] = []
        stopped = False
        step = position.step
        for epoch in range(position.epoch, run.total_epochs):
            skip = position.batch_in_epoch if epoch == position.epoch else 0
            for index, batch in enumerate(run.data.batches(epoch)):
                if index < skip:
                    continue
                if index >= run.batches_per_epoch or step >= run.total_steps:
                    break
                if auto is not None and not micro_losses:  # between steps: the last one's work all done
                    auto.between_steps(run, tracker, result, step)
                micro_losses.append(self._backward(run, batch, accumulation))
                if len(micro_losses) < accumulation and index < run.batches_per_epoch - 1:
                    continue
                self._optimizer_step(run)
                step += 1
                loss = sum(micro_losses) / len(micro_losses)
                micro_losses.clear()
                position.step, position.epoch, position.batch_in_epoch = step, epoch, index + 1
                result.steps, result.epochs = step, epoch + (1 if index + 1 >= run.batches_per_epoch else 0)
                progress = tracker.step(step=step, epoch=epoch + 1, loss=loss, lr=_current_lr(run.scheduler),
                                        memory_bytes=_memory_in_use(self.host.device))
                self._report(control, progress)
                if run.validation is not None:
                    run.validation.after_step(run, result, step)
                if step < run.total_steps:
                    if self.dist.any_true(self._stop or (control is not None and control.cancelled)):
                        stopped = True
                        break
                    if cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0 and run.prompts:
                        self._outputs.samples(run, result, tracker, step=step)
                        last_sample_step = step
                    save_now = self.dist.any_true(self._save_now)
                    self._save_now = False
                    if save_now or (cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0):
                        self._outputs.save(run, result, tracker, step_name(cfg.output_name, step), step=step,
                                           epoch=epoch)
                        if cfg.save_last_n_steps and not save_now and self.dist.is_main:
                            rotate_step_saves(self.output_dir, cfg.output_name, current_step=step,
                                              keep_last_n_steps=cfg.save_last_n_steps)
            if stopped or step >= run.total_steps:
                break
            position.epoch, position.batch_in_epoch = epoch + 1, 0
            result.epochs = epoch + 1
            if run.validation is not None:
                run.validation.after_epoch(run, result, epoch + 1, step)
            if epoch + 1 < run.total_epochs:
                if cfg.sample_every_n_epochs and (epoch + 1) % cfg.sample_every_n_epochs == 0 and run.prompts:
                    self._outputs.samples(run, result, tracker, step=step)
                    last_sample_step = step
                if cfg.save_every_n_epochs and (epoch + 1) % cfg.save_every_n_epochs == 0:
                    self._outputs.save(run, result, tracker, epoch_name(cfg.output_name, epoch + 1), step=step,
                                       epoch=epoch + 1)
                    if cfg.save_last_n_epochs and self.dist.is_main:
                        rotate_epoch_saves(self.output_dir, cfg.output_name, current_epoch=epoch + 1,
                                           keep_last_n=cfg.save_last_n_epochs, every_n_epochs=cfg.save_every_n_epochs)

        self._stage(control, 4, check=False)
        if self.dist.active:
            self.dist.check_in_sync(run.params)
            notes.append(f"the {self.dist.world_size} processes ended with identical weights")
        if stopped:
            result.cancelled = True
            if auto is not None:
                auto.at_stop(run, tracker, result, step)
            if cfg.save_on_cancel and step > 0:
                result.output = self._outputs.save(run, result, tracker, step_name(cfg.output_name, step),
                                                   step=step, epoch=result.epochs, card=True)
        else:
            if run.prompts and last_sample_step != step:
                self._outputs.samples(run, result, tracker, step=step)
            with_state = cfg.save_state or cfg.save_state_on_train_end
            result.output = self._outputs.save(run, result, tracker, cfg.output_name, step=step, epoch=result.epochs,
                                               card=True, finished=True, with_state=with_state)
        if control is not None:  # the saves and the last sample come after the last step's report
            control.progress(message=("stopped at" if stopped else "finished after") + f" step {step}",
                             saved=tracker.saved, sample=tracker.sample)
        return result

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

def _current_lr(scheduler: Any) -> float | None:
    with contextlib.suppress(AttributeError, IndexError, TypeError):
        return float(scheduler.get_last_lr()[0])
    return None


def _memory_in_use(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
