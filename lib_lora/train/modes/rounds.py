"""The rounds mode (ReLoRA as practitioners do it with sd-scripts): train, merge, train again, and save one LoRA.

Round n trains a fresh LoRA for its epochs at its learning rate (the rest of the config as given), then merges it
into the working weights at its strength (working.py: exact backup, restored bit for bit however the run ends),
so round n+1 learns on top of everything before. At the end the total change Σ strength_n·ΔW_n is cut to
`rounds_rank` by SVD (the `lora merge --method svd` code) and saved as the run's one LoRA, with the relative
error of the cut reported; `rounds_save_each` also keeps each round's own LoRA. To make a checkpoint of the
merged model, bake the saved LoRA into the loaded checkpoint (`lora bake`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ...networks.attach import WeightMerger
from ...networks.formats.base import NetworkModule
from ...networks.keys import build_target_index
from ...networks.loaded import as_applied, network_from_state_dict
from ...networks.metadata import ModeRecord, with_network_shape
from ...networks.tools.merge import merge_modules
from ...networks.tools.merge_methods import MergeOptions
from ..outputs import RunOutputs
from ..progress import ProgressTracker
from ..sampling import load_sample_prompts
from ..saving import step_name
from .base import TrainingMode, one_process, phase_run, run_phase
from .lora import LoraMode
from .working import working_weights

if TYPE_CHECKING:
    from ...jobs import JobControl
    from ..config import TrainConfig
    from ..loop import TrainRun
    from ..outputs import PreparedRun, TrainResult
    from ..resume_state import TrainPosition
    from .config import Round


class ExtractedNetwork(torch.nn.Module):
    """The saved LoRA of a rounds run: fixed kohya tensors, saved like a trained network's (no parameters)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        super().__init__()
        self._tensors = dict(tensors)
        self._metadata = dict(metadata)

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return {k: v if dtype is None or k.endswith(".alpha") else v.to(dtype) for k, v in self._tensors.items()}

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)


class RoundsMode(TrainingMode):
    """The rounds of ModeConfig.rounds, then the SVD of their total change (see the module docstring)."""

    name = "rounds"

    def execute(self, trainer: TrainRun, control: JobControl | None, notes: list[str], *, started: float,
                seed: int, resume: TrainPosition | None) -> TrainResult:
        one_process(trainer, self.name)
        config = trainer.config
        schedule = config.mode.round_schedule
        merged: list[tuple[Mapping[str, NetworkModule], float]] = []
        steps, epochs, losses = 0, 0, []
        with working_weights(trainer.host) as weights:
            for number, spec in enumerate(schedule, start=1):
                child = phase_run(trainer, round_config(config, spec, number), LoraMode(),
                                  keep_files=config.mode.rounds_save_each)
                result = run_phase(trainer, child, control, notes, started=started, seed=seed + number)
                steps, epochs = steps + result.steps, epochs + result.epochs
                losses.extend(result.loss_history)
                if child.prepared is None or result.steps == 0:
                    break
                if result.cancelled:
                    notes.append(f"stopped in round {number} of {len(schedule)}; the rounds so far are saved")
                weights.merge(child.prepared.network, spec.merge, f"round {number}")
                merged = weights.merged
                notes.append(f"round {number}: {result.steps} steps at learning rate {spec.learning_rate:g}, merged "
                             f"at {spec.merge:g}")
                if result.cancelled:
                    break
            last = child.prepared
        result.steps, result.epochs, result.loss_history = steps, epochs, losses
        if last is None or not merged or (result.cancelled and not config.run.save_on_cancel):
            result.output = None
            return result
        return self._save_total(trainer, last, merged, result)

    def _save_total(self, trainer: TrainRun, last: PreparedRun, merged: list[tuple[Mapping[str, NetworkModule], float]],
                    result: TrainResult) -> TrainResult:
        """Cut the total change to rounds_rank, save it as the run's LoRA (with the rounds' host restored)."""
        config = trainer.config
        rank = config.mode.rounds_rank or config.network.network_dim
        cut = merge_modules(merged, MergeOptions(method="svd", rank=rank))
        error = overall_error(cut.state, cut.errors)
        result.notes.append(f"saved one LoRA of rank {rank}, the SVD of the total change of {len(merged)} round(s): "
                            f"relative error {error:.2e} (the share of the change's Frobenius norm the cut lost)")
        mode = ModeRecord("rounds", rounds=list(config.mode.rounds), rounds_error=error)
        network_metadata = {**with_network_shape(last.facts.network_metadata, rank, float(rank)),
                            **mode.to_metadata()}
        steps = result.steps
        prompts = load_sample_prompts(config.run.sample_prompts) if config.run.sample_prompts else []
        final = replace(last, network=ExtractedNetwork(cut.state, network_metadata), validation=None, prompts=prompts,
                        facts=replace(last.facts, network_metadata=network_metadata, total_steps=steps,
                                      total_epochs=result.epochs))
        tracker = ProgressTracker(steps, result.epochs)
        tracker.restore(result.loss_history)
        stem = step_name(config.run.output_name, steps) if result.cancelled else config.run.output_name
        with _applied_for_samples(trainer, cut.state, needed=bool(prompts)):  # the card's sample: the saved LoRA
            outputs = RunOutputs(config, trainer.host, trainer.output_dir, trainer.dist)
            result.output = outputs.save(final, result, tracker, stem, step=steps, epoch=result.epochs, card=True,
                                         finished=not result.cancelled, with_state=False)
        return result


def overall_error(state: Mapping[str, torch.Tensor], errors: Mapping[str, float]) -> float:
    """‖ΔW − ΔW_r‖ / ‖ΔW‖ over all modules together (Frobenius), from each module's kept factors (alpha = rank,
    so up·down is ΔW_r) and its relative error. Per module the error alone misleads: a module that barely changed
    keeps rank 1 of noise and reports a large error on nothing."""
    lost = whole = 0.0
    for key, error in errors.items():
        up, down = state[f"{key}.lora_up.weight"], state[f"{key}.lora_down.weight"]
        kept = float((up.flatten(1).double() @ down.flatten(1).double()).norm())
        if error >= 1.0:
            continue
        total = kept * kept / (1.0 - error * error)
        lost, whole = lost + total * error * error, whole + total
    return math.sqrt(lost / whole) if whole else 0.0


@contextmanager
def _applied_for_samples(trainer: TrainRun, state: Mapping[str, torch.Tensor], *, needed: bool) -> Iterator[None]:
    """The saved LoRA merged into the host (exact backup, restored on exit) while its card's sample is rendered."""
    if not needed:
        yield
        return
    applied = as_applied(network_from_state_dict(state, name="rounds"))
    with WeightMerger(build_target_index(trainer.host)).applied([applied]):
        yield


def round_config(config: TrainConfig, spec: Round, number: int) -> TrainConfig:
    """Round `number`'s settings: its learning rate (for every group) and epochs, the rest as configured."""
    return config.with_values(
        learning_rate=spec.learning_rate, unet_lr=None, text_encoder_lr=None, max_train_epochs=spec.epochs,
        output_name=f"{config.run.output_name}-round{number}", save_every_n_epochs=None, save_every_n_steps=None,
        save_last_n_epochs=None, save_last_n_steps=None, save_state=False, save_state_on_train_end=False,
        sample_prompts=None, sample_every_n_steps=None, sample_every_n_epochs=None, sample_at_first=False)
