"""The stages before training: prepare data, build network, build optimizer; `prepare_run` builds a PreparedRun.

TrainRun (loop.py) calls `prepare_run` inside the host's training mode and then trains on what it returns. Each
stage reports itself through the JobControl (`enter_stage`). The order of the work is fixed: the run's files,
losses and random draws depend on it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, TrainingError
from .network.trainable import TrainableNetwork
from .optim import build_optimizer, optimizer_notes
from .outputs import PreparedRun
from .resume_state import TrainPosition, load_state
from .runtime import choose_precision
from .sampling import load_sample_prompts
from .saving import RunFacts, default_activation_text, host_model_name
from .schedule import build_scheduler
from .step_loss import LossSettings
from .validation_run import prepare_run_validation
from .vram import check_fits

if TYPE_CHECKING:
    from ..jobs import JobControl
    from .loop import TrainRun
    from .modes.base import DataSource
    from .runtime import Precision
    from .validation_run import RunValidation

STAGES = ("prepare data", "build network", "build optimizer", "train", "save")


def enter_stage(control: JobControl | None, index: int, *, check: bool = True) -> None:
    """Report stage `index` of STAGES; with `check`, a cancel asked for before it stops the run here."""
    if control is not None:
        if check:
            control.check()
        control.progress(message=f"{STAGES[index]} ({index + 1}/{len(STAGES)})", stage=STAGES[index])


@dataclass(frozen=True)
class StepCounts:
    """How long the run is: batches in an epoch (the least over the processes), optimizer steps and epochs."""

    batches_per_epoch: int
    total_steps: int
    total_epochs: int


@dataclass
class _Optimizing:
    """What the optimizer stage builds (the parts of PreparedRun that step the weights)."""

    optimizer: Any
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    params: list[torch.nn.Parameter]
    generator: torch.Generator


def prepare_run(trainer: TrainRun, control: JobControl | None, notes: list[str], started: float, *, seed: int,
                resume: TrainPosition | None) -> PreparedRun:
    """Run the first three stages for `trainer` (notes about the run are appended to `notes`)."""
    config, host = trainer.config, trainer.host
    run_cfg = config.run
    v_prediction = host.prediction_type == "v_prediction"
    if run_cfg.v_parameterization and not v_prediction:
        raise ConfigError("v_parameterization", True, "the loaded model predicts epsilon (noise), not v")

    enter_stage(control, 0)
    data, counts = _prepare_data(trainer, control, notes, seed)
    enter_stage(control, 1)
    precision, validation, network = _build_network(trainer, control, notes, seed)
    enter_stage(control, 2)
    optimizing = _build_optimizer(trainer, network, precision, notes, seed, counts)
    position = _start_position(trainer, optimizing, network, counts, seed=seed, started=started, resume=resume)
    data_metadata = data.metadata()
    facts = RunFacts(
        arch=host.arch.name, prediction_type=host.prediction_type, model_name=host_model_name(host), seed=seed,
        session_id=position.session_id, started_at=position.started_at, total_steps=counts.total_steps,
        total_epochs=counts.total_epochs, optimizer=config.optimizer.describe(),
        data_metadata=data_metadata, network_metadata=network.metadata(),
        activation_text=run_cfg.activation_text or default_activation_text(data_metadata.get("ss_dataset_dirs")),
    )
    prompts = load_sample_prompts(run_cfg.sample_prompts) if run_cfg.sample_prompts else []
    return PreparedRun(data=data, network=network, optimizer=optimizing.optimizer, scheduler=optimizing.scheduler,
                       scaler=optimizing.scaler, params=optimizing.params, precision=precision,
                       settings=LossSettings.from_run(run_cfg, v_prediction=v_prediction),
                       alphas_cumprod=host.alphas_cumprod(), generator=optimizing.generator, position=position,
                       batches_per_epoch=counts.batches_per_epoch, total_steps=counts.total_steps,
                       total_epochs=counts.total_epochs, facts=facts, prompts=prompts,
                       encode_with_grad=network.trains_text_encoder and not run_cfg.cache_text_encoder_outputs,
                       validation=validation)


def _prepare_data(trainer: TrainRun, control: JobControl | None, notes: list[str],
                  seed: int) -> tuple[DataSource, StepCounts]:
    """Stage 1: the mode's data, prepared, and the run's length from it (checked to fit in memory first)."""
    config = trainer.config
    check_fits(config, trainer.host, presets=trainer.presets)  # before any image is read: refuse a run that cannot fit
    data = trainer.mode.data(trainer, seed=seed)
    data.prepare(control)
    notes.extend(f"left out: {item}" for item in data.ignored)
    batches_per_epoch = trainer.dist.min_int(len(data))
    if batches_per_epoch < 1:
        raise TrainingError("the data gives no batch")
    updates_per_epoch = math.ceil(batches_per_epoch / config.run.gradient_accumulation_steps)
    if config.run.max_train_epochs:
        total_epochs = config.run.max_train_epochs
        total_steps = total_epochs * updates_per_epoch
    else:
        total_steps = config.run.max_train_steps
        total_epochs = math.ceil(total_steps / updates_per_epoch)
    return data, StepCounts(batches_per_epoch, total_steps, total_epochs)


def _build_network(trainer: TrainRun, control: JobControl | None, notes: list[str],
                   seed: int) -> tuple[Precision, RunValidation | None, TrainableNetwork]:
    """Stage 2: the precision, the validation set (main process) and the network in training mode."""
    config, host = trainer.config, trainer.host
    run_cfg = config.run
    precision = choose_precision(run_cfg.mixed_precision, full_fp16=run_cfg.full_fp16,
                                 full_bf16=run_cfg.full_bf16, host_dtype=host.dtype, device=host.device)
    notes.extend(precision.notes)
    validation = prepare_run_validation(config, host, run_seed=seed, precision=precision, control=control) \
        if trainer.dist.is_main else None
    network = TrainableNetwork.create(config.network, host, seed=seed, presets=trainer.presets)
    if precision.network_dtype is not torch.float32:
        network.to(precision.network_dtype)
    network.train()
    return precision, validation, network


def _build_optimizer(trainer: TrainRun, network: TrainableNetwork, precision: Precision, notes: list[str],
                     seed: int, counts: StepCounts) -> _Optimizing:
    """Stage 3: the optimizer over the network's parameter groups, its schedule, the grad scaler, the noise RNG."""
    opt = trainer.config.optimizer
    groups = network.param_groups(unet_lr=opt.unet_lr, text_encoder_lr=opt.text_encoder_lr,
                                  learning_rate=opt.learning_rate)
    if not groups:
        raise ConfigError("learning_rate", opt.learning_rate, "every learning rate is 0: nothing would train")
    notes.extend(optimizer_notes(opt, groups))
    optimizer = build_optimizer(opt, groups)
    scheduler = build_scheduler(opt, optimizer, total_steps=counts.total_steps)
    scaler = torch.amp.GradScaler(trainer.host.device.type) if precision.use_grad_scaler else None
    params = [p for group in groups for p in group["params"]]
    generator = torch.Generator().manual_seed(seed + 1_000_003 * trainer.dist.rank)
    return _Optimizing(optimizer, scheduler, scaler, params, generator)


def _start_position(trainer: TrainRun, optimizing: _Optimizing, network: TrainableNetwork, counts: StepCounts, *,
                    seed: int, started: float, resume: TrainPosition | None) -> TrainPosition:
    """Where training starts: step 0, or the resumed state (loaded into the network, optimizer and RNGs)."""
    dist = trainer.dist
    position = TrainPosition(step=0, epoch=0, batch_in_epoch=0, seed=seed,
                             session_id=random.Random(seed ^ int(started)).randrange(2**31), started_at=started,
                             world_size=dist.world_size)
    if resume is not None:
        if resume.world_size != dist.world_size:
            raise TrainingError(f"resume: the state was written by {resume.world_size} process(es), "
                                f"this run has {dist.world_size}")
        position = load_state(Path(trainer.config.run.resume), network=network, optimizer=optimizing.optimizer,
                              scheduler=optimizing.scheduler, noise_generator=optimizing.generator,
                              scaler=optimizing.scaler)
        if position.batch_in_epoch >= counts.batches_per_epoch:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
    return position
